"""POST /v1/generate on a GPT run: the same tokens as `bertjax.generate.generate` (greedy and
sampled), stop strings cut (also streamed), banned words avoided, the SSE format, 422 / 413 /
429 / 400, a disconnected stream stops, and no compilation after start-up."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import dispatch
from serve_util import LM_TEXTS, running_server, small_settings, write_gpt_run

from bertjax import inference
from bertjax.generate import generate, sample_logits
from bertjax.serve.app import create_app
from bertjax.serve.decoder import BannedTable, banned_mask, tail_of
from bertjax.serve.loading import load_backend
from bertjax.serve.textstream import TextStream

LIMIT = 24  # max_new_tokens and max_prompt_tokens of the test server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = write_gpt_run(tmp_path_factory.mktemp("gpt_run"))
    backend = load_backend(
        str(workdir), dtype="float32", max_new_tokens=LIMIT, max_prompt_tokens=LIMIT
    )
    app = create_app(backend, small_settings(request_timeout_s=60.0))
    run = inference.load_run(workdir, dtype="float32")
    with running_server(app, ready_timeout=600) as url:  # minutes on a busy machine
        yield url, app, run


def _prompt_ids(run, text):
    return [run.tokenizer.eot_id, *run.tokenizer.encode(text).tolist()]


def _offline(run, text, n, **kw):
    """generate()'s new tokens (the end-of-text token dropped) for the server's prompt."""
    prompt = _prompt_ids(run, text)
    out = generate(run.module, run.params, [prompt], n, eos_id=run.tokenizer.eot_id, **kw)[0]
    new = out[len(prompt) :].tolist()
    return new[:-1] if new and new[-1] == run.tokenizer.eot_id else new


def _events(response: httpx.Response) -> list:
    """The data of each server-sent event ([DONE] as a string)."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "", "the stream ends with a blank line"
    out = []
    for block in blocks[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def _stream(url, body) -> list:
    with httpx.Client(timeout=60) as client:
        r = client.post(f"{url}/v1/generate", json={**body, "stream": True})
        assert r.status_code == 200, r.text
        return _events(r)


CASES = [
    ("The cat", dict(temperature=0.0), 20),
    ("Once upon a time", dict(temperature=1.0, seed=3), 24),
    ("A dog ran", dict(temperature=0.8, top_k=20, seed=5), 17),
    ("", dict(temperature=1.2, top_p=0.9, seed=7), 12),
    ("She said that the weather", dict(temperature=0.7, top_k=10, top_p=0.8, seed=11), 9),
]


@pytest.mark.parametrize("prompt,settings,n", CASES)
def test_same_tokens_as_offline_generate_json_and_stream(server, prompt, settings, n):
    url, _, run = server
    expected = _offline(run, prompt, n, rng=settings.get("seed", 0), **{
        k: v for k, v in settings.items() if k != "seed"
    })  # fmt: skip
    body = {"prompt": prompt, "max_new_tokens": n, **settings}
    r = httpx.post(f"{url}/v1/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["token_ids"] == expected
    assert got["generated_text"] == run.tokenizer.decode(expected, skip_special_tokens=True)
    assert got["prompt_tokens"] == len(_prompt_ids(run, prompt))
    if got["finish_reason"] == "length":
        assert got["generated_tokens"] == n == len(expected)
    else:
        assert got["finish_reason"] == "eos" and got["generated_tokens"] == len(expected) + 1
    assert float(r.headers["x-inference-time"]) > 0 and float(r.headers["x-queue-time"]) >= 0

    events = _stream(url, body)
    assert events[-1] == "[DONE]"
    tokens, final = events[:-2], events[-2]
    assert [e["index"] for e in events[:-1]] == list(range(len(events) - 1))
    assert final["finish_reason"] == got["finish_reason"]
    ids = [e["token_id"] for e in events[:-1]]
    assert ids[: len(expected)] == expected
    assert "".join(e["text"] for e in events[:-1]) == got["generated_text"]
    assert final["generated_text"] == got["generated_text"]
    if "seed" in settings:
        assert final["seed"] == got["seed"] == settings["seed"]
    assert all("finish_reason" not in e for e in tokens)


def test_seed_defaults_to_a_random_one_that_reproduces(server):
    url, _, _ = server
    body = {"prompt": "The dog", "max_new_tokens": 10, "temperature": 1.0}
    first = httpx.post(f"{url}/v1/generate", json=body, timeout=60).json()
    again = httpx.post(f"{url}/v1/generate", json={**body, "seed": first["seed"]}, timeout=60)
    assert again.json()["token_ids"] == first["token_ids"]


def _greedy(url, prompt, **extra):
    body = {"prompt": prompt, "max_new_tokens": LIMIT, "temperature": 0.0, **extra}
    r = httpx.post(f"{url}/v1/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_stop_strings_cut_the_text_before_them_also_when_streamed(server):
    url, _, _ = server
    free = _greedy(url, "The import statement")
    text = free["generated_text"]
    assert len(text) > 12, text
    # A stop string from the middle of the greedy text (it may span tokens), one that never
    # occurs, and the first occurrence of the earliest stop wins.
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = text[: text.find(stop)]
    body = {"stop": ["\u00a7never\u00a7", stop]}
    got = _greedy(url, "The import statement", **body)
    assert got["finish_reason"] == "stop" and got["generated_text"] == expected
    assert got["token_ids"] == free["token_ids"][: len(got["token_ids"])]
    events = _stream(url, {"prompt": "The import statement", "max_new_tokens": LIMIT,
                           "temperature": 0.0, **body})  # fmt: skip
    texts = [e["text"] for e in events[:-1]]
    assert "".join(texts) == expected and events[-2]["finish_reason"] == "stop"
    shown = ""
    for t in texts:  # the stream never shows more than the final text
        shown += t
        assert expected.startswith(shown)
    never = _greedy(url, "The import statement", stop=["\u00a7never\u00a7"])
    assert never["generated_text"] == text and never["finish_reason"] == free["finish_reason"]


def test_text_stream_holds_back_a_possible_stop_and_unfinished_characters():
    pieces = {1: "he", 2: "l", 3: "lo w", 4: "orld", 5: "\ufffd", 6: "é"}

    def decode(ids):  # 5 then 6 decode together to "é" (a character split over two tokens)
        text = "".join(pieces[i] for i in ids)
        return text.replace("\ufffdé", "é")

    s = TextStream(decode, ["lo x"])
    assert [s.push(1), s.push(2)] == ["he", ""]  # "l" may start "lo x"
    assert s.push(3) == "llo w" and s.push(4) == "orld" and not s.stopped
    assert s.push(5) == "" and s.push(6) == "é"
    assert s.finish() == "" and s.text == "hello worldé"
    s = TextStream(decode, ["o w", "ll"])
    assert s.push(1) == "he" and s.push(2) == "" and s.push(3) == "" and s.stopped
    assert s.text == "he"


def test_banned_words_are_never_generated(server):
    url, app, run = server
    backend = app.state.backend
    free = _greedy(url, "The cat sat")
    ids = free["token_ids"]
    assert len(ids) >= 4
    # A single-token word: the greedy first token, banned as a word.
    word = run.tokenizer.decode([ids[0]]).strip()
    assert (ids[0],) in backend.banned_sequences([word])
    got = _greedy(url, "The cat sat", banned_words=[word])
    assert ids[0] not in got["token_ids"] and got["token_ids"][0] != ids[0]
    for seq in backend.banned_sequences([word]):
        assert not _contains(_prompt_ids(run, "The cat sat") + got["token_ids"], seq)
    # A two-token word the greedy output contains: the output is the same up to its first
    # token, then avoids its second.
    for i in range(len(ids) - 1):
        pair = run.tokenizer.decode(ids[i : i + 2])
        if pair[0] == " " and backend.banned_sequences([pair]) == ((ids[i], ids[i + 1]),):
            break
    else:
        pytest.fail(f"no two-token word in the greedy output {ids}")
    got = _greedy(url, "The cat sat", banned_words=[pair])
    assert got["token_ids"][: i + 1] == ids[: i + 1] and got["token_ids"][i + 1] != ids[i + 1]
    assert not _contains(_prompt_ids(run, "The cat sat") + got["token_ids"], ids[i : i + 2])
    sampled = httpx.post(f"{url}/v1/generate", timeout=60, json={
        "prompt": "The cat sat", "max_new_tokens": LIMIT, "temperature": 1.5, "seed": 1,
        "banned_words": [word, pair]})  # fmt: skip
    for seq in backend.banned_sequences([word, pair]):
        assert not _contains(_prompt_ids(run, "The cat sat") + sampled.json()["token_ids"], seq)


def _contains(ids, seq):
    seq = list(seq)
    return any(list(ids[k : k + len(seq)]) == seq for k in range(len(ids) - len(seq) + 1))


def test_banned_mask_follows_bad_words_ids():
    table = BannedTable.make([[5], [3, 4], [1, 2, 3]], rows=4, max_tokens=4)
    mask = jax.jit(banned_mask, static_argnums=0)

    def banned(context):
        return set(np.nonzero(np.asarray(mask(10, table, tail_of(context, 3)))[0])[0].tolist())

    assert banned([]) == {5}
    assert banned([7, 3]) == {5, 4}
    assert banned([1, 2]) == {5, 3}
    assert banned([9, 1, 2]) == {5, 3}
    assert banned([2, 1, 2, 9]) == {5}
    with pytest.raises(ValueError, match="banned sequence of 5 tokens"):
        BannedTable.make([[1, 2, 3, 4, 5]], rows=4, max_tokens=4)


def test_traced_sampler_settings_give_the_static_tokens():
    """sample_logits with array settings (one compilation) == with Python ones."""
    logits = jax.random.normal(jax.random.key(0), (3, 50)) * 3
    dynamic = jax.jit(
        lambda key, t, g, k, p, up, banned: sample_logits(
            logits, key, t, greedy=g, top_k=k, top_p=p, use_top_p=up, banned=banned
        )
    )
    no_ban = jnp.zeros((3, 50), bool)
    for greedy, top_k, top_p in [(True, 0, 1.0), (False, 0, 1.0), (False, 5, 1.0),
                                 (False, 0, 0.7), (False, 3, 0.5), (False, 50, 0.99)]:  # fmt: skip
        for seed in range(4):
            key = jax.random.key(seed)
            static = sample_logits(logits, key, jnp.float32(0.9), greedy=greedy, top_k=top_k,
                                   top_p=top_p, use_top_p=top_p < 1)  # fmt: skip
            traced = dynamic(key, jnp.float32(0.9), jnp.bool_(greedy), jnp.int32(top_k),
                             jnp.float32(top_p), jnp.bool_(top_p < 1), no_ban)  # fmt: skip
            np.testing.assert_array_equal(np.asarray(static), np.asarray(traced))
    best = np.asarray(logits).argmax(-1)
    ban = jnp.zeros((3, 50), bool).at[jnp.arange(3), best].set(True)
    for seed in range(20):
        out = dynamic(jax.random.key(seed), jnp.float32(0.1), jnp.bool_(seed % 2), jnp.int32(2),
                      jnp.float32(1.0), jnp.bool_(False), ban)  # fmt: skip
        assert not np.any(np.asarray(out) == best)


def test_sse_format_and_info(server):
    url, _, _ = server
    events = _stream(url, {"prompt": "Hello", "max_new_tokens": 5, "temperature": 0.0})
    assert events[-1] == "[DONE]" and len(events) >= 3
    for e in events[:-2]:
        assert set(e) == {"index", "token_id", "text"}
    assert {"finish_reason", "generated_text", "generated_tokens", "seed"} <= set(events[-2])
    info = httpx.get(f"{url}/info").json()
    assert info["model"]["task"] == "causal_lm" and info["model"]["model_type"] == "gpt2"
    assert info["model"]["max_new_tokens"] == LIMIT and info["model"]["max_prompt_tokens"] == LIMIT
    assert info["buckets"] is None and info["ready"]
    assert "/v1/generate" in httpx.get(f"{url}/openapi.json").json()["paths"]


BAD = [
    ({"prompt": "a", "temperature": -0.5}, "temperature"),
    ({"prompt": "a", "top_p": 1.5}, "top_p"),
    ({"prompt": "a", "top_p": 0}, "top_p"),
    ({"prompt": "a", "max_new_tokens": LIMIT + 1}, "max_new_tokens"),
    ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "a", "top_k": 100_000}, "top_k"),
    ({"prompt": "a", "top_k": -1}, "top_k"),
    ({"prompt": "a", "seed": -3}, "seed"),
    ({"prompt": "a", "temperatur": 1.0}, "temperatur"),
    ({"prompt": "a", "stop": [""]}, "stop"),
    ({"prompt": "a", "stop": "x"}, "stop"),
    ({"prompt": "a", "banned_words": [" "]}, "banned_words[0]"),
    ({"prompt": "a", "banned_words": ["x" * 200]}, "banned_words[0]"),
    ({"prompt": "a", "banned_words": ["w"] * 17}, "banned_words"),
    ({"prompt": "a", "stream": "yes"}, "stream"),
    ({"prompt": 5}, "prompt"),
    ({}, "prompt"),
]


@pytest.mark.parametrize("body,field", BAD)
def test_bad_fields_get_422_naming_the_field(server, body, field):
    url, _, _ = server
    r = httpx.post(f"{url}/v1/generate", json=body, timeout=30)
    assert r.status_code == 422, r.text
    error = r.json()
    assert set(error) == {"error", "error_type"} and error["error_type"] == "validation"
    assert error["error"].startswith(field), error


def test_long_prompt_413_and_other_routes_400(server):
    url, _, _ = server
    r = httpx.post(f"{url}/v1/generate", json={"prompt": " ".join(LM_TEXTS)}, timeout=30)
    assert r.status_code == 413 and r.json()["error_type"] == "input_too_long"
    for route in ("/v1/predict", "/v1/embed"):
        r = httpx.post(f"{url}{route}", json={"inputs": "a"}, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error_type"] == "unsupported" and r.json()["error"].startswith(route)


def test_429_at_once_beyond_max_concurrent_requests(server):
    url, app, _ = server
    limits = app._asgi
    gate = threading.Event()
    app.state.worker._pool.submit(gate.wait)  # the model thread is busy: requests wait for it
    limits.max_concurrent_requests = 1
    first: dict = {}

    def send_first():
        first["r"] = httpx.post(f"{url}/v1/generate", timeout=60,
                                json={"prompt": "a", "max_new_tokens": 3})  # fmt: skip

    thread = threading.Thread(target=send_first)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while limits.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
        r = httpx.post(f"{url}/v1/generate", json={"prompt": "b"}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error_type"] == "overloaded"
        assert time.perf_counter() - started < 2.0
    finally:
        gate.set()
        thread.join(timeout=60)
        limits.max_concurrent_requests = app.state.settings.max_concurrent_requests
    assert first["r"].status_code == 200


def test_a_disconnected_stream_stops_its_generation(server):
    url, app, _ = server
    backend = app.state.backend
    step = backend.decoder.step

    def slow_step(*args, **kwargs):
        time.sleep(0.1)
        return step(*args, **kwargs)

    backend.decoder.step = slow_step
    try:
        before = backend.tokens_generated
        body = {"prompt": "a", "max_new_tokens": LIMIT, "temperature": 1.0, "stop": ["\u00a7"],
                "banned_words": [], "stream": True, "seed": 0}  # fmt: skip
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", f"{url}/v1/generate", json=body) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
        time.sleep(0.6)
        settled = backend.tokens_generated
        time.sleep(0.6)
        assert backend.tokens_generated == settled
        assert settled - before < LIMIT // 2, "the generation went on after the disconnect"
        deadline = time.monotonic() + 5
        while app.state.worker.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.worker.active == 0
    finally:
        backend.decoder.step = step


def test_request_timeout_504_and_a_timeout_event_when_streaming(server):
    url, app, _ = server
    backend, state = app.state.backend, app.state
    step, settings = backend.decoder.step, state.settings

    def slow_step(*args, **kwargs):
        time.sleep(0.05)
        return step(*args, **kwargs)

    backend.decoder.step = slow_step
    state.settings = dataclasses.replace(settings, request_timeout_s=0.3)
    try:
        body = {"prompt": "a", "max_new_tokens": LIMIT, "temperature": 0.0}
        r = httpx.post(f"{url}/v1/generate", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error_type"] == "timeout", r.text
        events = _stream(url, body)
        assert events[-1] == {"error": events[-1]["error"], "error_type": "timeout"}
        assert 1 <= len(events) - 1 < LIMIT and all("finish_reason" not in e for e in events)
    finally:
        backend.decoder.step = step
        state.settings = settings
    assert httpx.post(f"{url}/v1/generate", json=body, timeout=60).status_code == 200


@pytest.mark.slow  # ~40 generations
def test_no_compilation_after_start_up_across_random_requests(server):
    url, app, run = server
    compiles = []

    def on_event(event: str, duration: float, **kwargs) -> None:
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(event)

    rng = np.random.default_rng(0)
    words = " ".join(LM_TEXTS).split()
    bodies = []
    while len(bodies) < 40:
        prompt = " ".join(rng.choice(words, size=int(rng.integers(0, 20))))
        if len(_prompt_ids(run, prompt)) > LIMIT:
            continue
        bodies.append({
            "prompt": prompt, "max_new_tokens": int(rng.integers(1, LIMIT + 1)),
            "temperature": float(rng.choice([0.0, 0.7, 1.0])), "top_k": int(rng.choice([0, 5])),
            "top_p": float(rng.choice([1.0, 0.9])), "seed": int(rng.integers(0, 1000)),
            "stop": ["the"] if rng.random() < 0.3 else [],
            "banned_words": ["dog", "a cat"] if rng.random() < 0.3 else [],
            "stream": bool(rng.random() < 0.3),
        })  # fmt: skip
    lengths = {len(_prompt_ids(run, b["prompt"])) for b in bodies}
    assert len(lengths) > 10
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        with httpx.Client(timeout=60) as client:
            statuses = [client.post(f"{url}/v1/generate", json=b).status_code for b in bodies]
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert statuses == [200] * len(bodies)
    assert compiles == [], f"{len(compiles)} compilations after start-up"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'bertjax_requests_total{route="/v1/generate",status="200"}' in metrics
    assert "bertjax_generated_tokens_total" in metrics
