"""The HTTP API on loopback: response shapes, exact results, no compilation after start-up
across 1,000 requests, Prometheus counts, and a fuzz of malformed bodies."""

import asyncio
import json

import httpx
import jax
import numpy as np
import pytest
from jax._src import dispatch
from serve_util import WORDS, random_text, running_server, small_settings, tiny_backend

from bertjax.serve.app import create_app

SETTINGS = dict(max_batch_size=4, max_batch_tokens=64, max_client_batch_size=8)


@pytest.fixture(scope="module")
def server():
    backend = tiny_backend(num_labels=3, max_seq_length=32)
    app = create_app(backend, small_settings(**SETTINGS))
    with running_server(app) as url:
        yield url, backend, app


def _offline(backend, text, pair=None):
    (row,) = backend.featurize([text], [pair], truncate=True)
    batch = {"input_ids": row.input_ids[None], "token_type_ids": row.token_type_ids[None]}
    out = jax.jit(backend.module.apply)({"params": backend.params}, batch)
    hidden = np.asarray(out["hidden_states"][0])
    return np.asarray(out["logits"][0]), hidden.mean(0), np.asarray(out["pooled"][0])


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_predict_shapes_scores_and_exact_logits(server):
    url, backend, _ = server
    one = httpx.post(f"{url}/v1/predict", json={"inputs": "the movie was good"})
    assert one.status_code == 200
    scores = one.json()
    assert [s["label"] for s in scores] != [] and len(scores) == 3
    assert scores == sorted(scores, key=lambda s: -s["score"])
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-6
    assert float(one.headers["x-queue-time"]) >= 0 and float(one.headers["x-inference-time"]) > 0

    inputs = [["the plot", "was boring"], ["not very fun"], "great acting"]
    many = httpx.post(f"{url}/v1/predict", json={"inputs": inputs, "raw_scores": True}).json()
    assert len(many) == 3
    for item, got in zip(inputs, many, strict=True):
        text, pair = (item, None) if isinstance(item, str) else (item[0], item[1:] or [None])
        pair = pair[0] if isinstance(pair, list) else pair
        logits, _, _ = _offline(backend, text, pair)
        by_label = {s["label"]: s["score"] for s in got}
        raw = np.array([by_label[n] for n in backend.label_names])
        np.testing.assert_allclose(raw, logits, rtol=1e-6, atol=1e-6)

    top = httpx.post(f"{url}/v1/predict", json={"inputs": ["bad"], "top_k": 1}).json()
    assert len(top) == 1 and len(top[0]) == 1


def test_padded_batches_equal_the_model_on_each_text_alone():
    """--no-pack_rows: one padded row per input, at (batch, length) buckets."""
    backend = tiny_backend(num_labels=3, max_seq_length=32)
    app = create_app(backend, small_settings(**SETTINGS, pack_rows=False))
    inputs = [["the plot", "was boring"], "great acting", "not very fun at all"]
    with running_server(app) as url:
        info = httpx.get(f"{url}/info").json()["buckets"]
        got = httpx.post(f"{url}/v1/predict", json={"inputs": inputs, "raw_scores": True})
    assert info["packed"] is False and [4, 16] in info["shapes"]
    assert all(len(key) == 2 for key in backend.compiled_shapes)  # no packed function
    for item, scores in zip(inputs, got.json(), strict=True):
        text, pair = (item, None) if isinstance(item, str) else item
        logits, _, _ = _offline(backend, text, pair)
        raw = np.array([{s["label"]: s["score"] for s in scores}[n] for n in backend.label_names])
        np.testing.assert_allclose(raw, logits, rtol=1e-6, atol=1e-6)


def test_embed_mean_and_pooler_normalised(server):
    url, backend, _ = server
    _, mean, pooled = _offline(backend, "a sad story")
    got = httpx.post(f"{url}/v1/embed", json={"inputs": "a sad story"}).json()
    np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    raw = httpx.post(
        f"{url}/v1/embed", json={"inputs": ["a sad story"], "pooling": "pooler", "normalize": False}
    ).json()
    np.testing.assert_allclose(raw[0], pooled, rtol=1e-6, atol=1e-6)


def test_info_docs_and_health(server):
    url, _, app = server
    info = httpx.get(f"{url}/info").json()
    assert info["model"]["label_names"] == ["class_0", "class_1", "class_2"]
    assert info["buckets"]["packed"] is True  # a classifier packs its inputs by default
    assert [tuple(s) for s in info["buckets"]["shapes"]] == app.state.grid.shapes()
    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/v1/predict" in httpx.get(f"{url}/openapi.json").json()["paths"]
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.slow  # 1,000 requests: tens of seconds on a quiet 2-core machine
def test_no_compilation_across_1000_requests_and_metrics_count_them(server):
    url, backend, app = server
    compiles = []

    def on_event(event: str, duration: float, **kwargs) -> None:
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(event)

    before = httpx.get(f"{url}/metrics").text
    ran_buckets = []
    run = backend.run

    def recording_run(rows, plan):
        ran_buckets.append(plan.bucket)  # the app packs a classifier's inputs by default
        return run(rows, plan)

    app.state.batcher._run_fn = recording_run
    rng = np.random.default_rng(1)
    # Lengths from 1 to 40 words: every length bucket, and texts beyond the largest (truncated).
    bodies = [
        {"inputs": random_text(rng, 40) if i % 10 else [random_text(rng, 20)] * 2, "truncate": True}
        for i in range(1000)
    ]

    async def drive() -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            queue = list(reversed(bodies))
            statuses: list[int] = []

            async def worker() -> None:
                while queue:
                    r = await client.post("/v1/predict", json=queue.pop())
                    statuses.append(r.status_code)

            await asyncio.gather(*(worker() for _ in range(16)))
            return statuses

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        statuses = asyncio.run(drive())
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
        app.state.batcher._run_fn = run
    assert statuses == [200] * 1000
    assert compiles == [], f"{len(compiles)} compilations after start-up"
    assert set(ran_buckets) <= set(app.state.grid.shapes())
    assert {b[1] for b in ran_buckets} == set(app.state.grid.lengths)

    after = httpx.get(f"{url}/metrics").text
    label = '{route="/v1/predict",status="200"}'
    sent = _metric(after, "bertjax_requests_total", label) - _metric(
        before, "bertjax_requests_total", label
    )
    assert sent == 1000
    rows = 1000 + 100  # every 10th request is a batch of two texts
    batches = _metric(after, "bertjax_batch_size_count") - _metric(
        before, "bertjax_batch_size_count"
    )
    row_sum = _metric(after, "bertjax_batch_size_sum") - _metric(before, "bertjax_batch_size_sum")
    assert row_sum == rows
    assert row_sum / batches > 1, "16 concurrent clients should share batches"
    assert _metric(after, "bertjax_queue_depth") == 0


TEN_MB = "x" * (10 * 1024 * 1024)
MALFORMED = [
    ("wrong type: number", json.dumps({"inputs": 5})),
    ("wrong type: list of numbers", json.dumps({"inputs": [1, 2]})),
    ("wrong type: object", json.dumps({"inputs": {"text": "a"}})),
    ("wrong type: null", json.dumps({"inputs": None})),
    ("wrong type: top_k string", json.dumps({"inputs": "a", "top_k": "3"})),
    ("wrong type: raw_scores string", json.dumps({"inputs": "a", "raw_scores": "yes"})),
    ("wrong type: body is a list", json.dumps(["a"])),
    ("missing inputs", json.dumps({})),
    ("unknown field", json.dumps({"inputs": "a", "temperature": 1})),
    ("huge number", json.dumps({"inputs": "a", "top_k": 10**30})),
    ("huge float", '{"inputs": "a", "top_k": 1e400}'),
    ("negative top_k", json.dumps({"inputs": "a", "top_k": -1})),
    ("5000-digit integer", '{"inputs": "a", "top_k": ' + "9" * 5000 + "}"),
    ("empty list", json.dumps({"inputs": []})),
    ("empty inner list", json.dumps({"inputs": [[]]})),
    ("three texts in a pair", json.dumps({"inputs": [["a", "b", "c"]]})),
    ("too many inputs", json.dumps({"inputs": ["a"] * 9})),
    ("too long without truncate", json.dumps({"inputs": " ".join(WORDS * 3)})),
    ("10 MB string", json.dumps({"inputs": TEN_MB})),
    ("invalid UTF-8", b'{"inputs": "\xff\xfe\xfa"}'),
    ("not JSON", b"{inputs: 'a'"),
    ("empty body", b""),
]


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/embed"])
def test_fuzz_malformed_bodies_get_4xx_and_the_server_keeps_answering(server, route):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, body in MALFORMED:
            content = body.encode() if isinstance(body, str) else body
            r = client.post(route, content=content, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
            error = r.json()
            assert set(error) == {"error", "error_type"} and error["error"], name
            ok = client.post(route, json={"inputs": "still here"})
            assert ok.status_code == 200, name


def test_validation_errors_name_the_field(server):
    url, _, _ = server
    r = httpx.post(f"{url}/v1/predict", json={"inputs": "a", "top_k": 0})
    assert r.status_code == 422 and r.json()["error"].startswith("top_k")
    r = httpx.post(f"{url}/v1/predict", json={"inputs": "a", "topk": 2})
    assert r.status_code == 422 and "topk" in r.json()["error"]
    r = httpx.post(f"{url}/v1/embed", json={"inputs": "a", "pooling": "max"})
    assert r.status_code == 422 and r.json()["error"].startswith("pooling")
    r = httpx.post(f"{url}/v1/predict", json={"inputs": ["a"] * 9})
    assert r.status_code == 413 and r.json()["error_type"] == "too_many_inputs"
