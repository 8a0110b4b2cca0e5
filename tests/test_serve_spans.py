"""POST /v1/predict on squad and ner runs: answers and entities equal to
`bertjax.inference.qa.predict` / `ner.predict` on the same run directory, bad bodies 422."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from serve_util import WORDS, running_server, small_settings, write_span_run

from bertjax import inference
from bertjax.inference import ner, qa
from bertjax.serve.app import create_app
from bertjax.serve.loading import load_backend

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SETTINGS = dict(max_batch_size=2, max_batch_tokens=64, max_client_batch_size=8)


def _serve(workdir):
    app = create_app(load_backend(str(workdir)), small_settings(**SETTINGS))
    return running_server(app, ready_timeout=600)  # compiling takes minutes on a busy machine


@pytest.fixture(scope="module")
def squad_server(tmp_path_factory):
    workdir = write_span_run(
        tmp_path_factory.mktemp("squad_run"), "squad", max_seq_length=32,
        data={"doc_stride": 8, "max_query_length": 8, "n_best_size": 20, "max_answer_length": 30},
    )  # fmt: skip
    with _serve(workdir) as url:
        yield url, inference.load_run(workdir)


@pytest.fixture(scope="module")
def ner_server(tmp_path_factory):
    workdir = write_span_run(
        tmp_path_factory.mktemp("ner_run"), "ner", max_seq_length=16, label_names=TAGS
    )
    with _serve(workdir) as url:
        yield url, inference.load_run(workdir)


def _texts(seed: int, n: int, lo: int, hi: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(lo, hi))))
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", ", it is."]))
    return out


def test_qa_answers_equal_offline_predict(squad_server):
    url, run = squad_server
    # Contexts of 5 to 60 words: one window up to several (max_seq_length 32, stride 8).
    contexts = _texts(0, 6, 5, 60)
    questions = [f"who was the {w} actor?" for w in ("best", "sad", "funny", "long", "bad", "a")]
    offline = qa.predict(run, questions, contexts)
    windows, _ = qa.featurize(run, questions, contexts)
    assert len(windows["input_ids"]) > len(contexts) + 3, "some questions need several windows"
    assert any(a["start"] >= 0 for a in offline)
    batch = [{"question": q, "context": c} for q, c in zip(questions, contexts, strict=True)]
    r = httpx.post(f"{url}/v1/predict", json={"inputs": batch}, timeout=60)
    assert r.status_code == 200, r.text
    served = r.json()
    assert len(served) == len(batch)
    for got, want, context in zip(served, offline, contexts, strict=True):
        assert set(got) == {"answer", "score", "start", "end"}
        assert (got["answer"], got["start"], got["end"]) == (
            want["text"], want["start"], want["end"]
        )  # fmt: skip
        assert got["score"] == pytest.approx(want["score"], rel=1e-5, abs=1e-5)
        if got["start"] >= 0:
            assert context[got["start"] : got["end"]] == got["answer"]
    assert float(r.headers["x-inference-time"]) > 0
    one = httpx.post(f"{url}/v1/predict", json={"inputs": batch[2]}, timeout=60).json()
    assert one == served[2]


def test_ner_entities_equal_offline_predict(ner_server):
    url, run = ner_server
    # Long texts split over several rows (max_seq_length 16); an empty text has no entities.
    texts = [*_texts(1, 6, 1, 30), ""]
    offline = ner.predict(run, texts)
    assert sum(map(len, offline)) > 0, "the random tagger should find some entities"
    r = httpx.post(f"{url}/v1/predict", json={"inputs": texts}, timeout=60)
    assert r.status_code == 200, r.text
    served = r.json()
    assert len(served) == len(texts) and served[-1] == []
    for got, want, text in zip(served, offline, texts, strict=True):
        assert [(e["type"], e["start"], e["end"], e["text"]) for e in got] == [
            (e["type"], e["start"], e["end"], e["text"]) for e in want
        ]
        for g, w in zip(got, want, strict=True):
            assert g["score"] == pytest.approx(w["score"], rel=1e-5, abs=1e-6)
            assert text[g["start"] : g["end"]] == g["text"]
    one = httpx.post(f"{url}/v1/predict", json={"inputs": texts[0]}, timeout=60).json()
    assert [e["text"] for e in one] == [e["text"] for e in served[0]]


def test_info_shows_the_task_and_generate_is_unsupported(squad_server, ner_server):
    for url, task in ((squad_server[0], "squad"), (ner_server[0], "ner")):
        info = httpx.get(f"{url}/info").json()
        assert info["model"]["task"] == task
        r = httpx.post(f"{url}/v1/generate", json={"prompt": "a"})
        assert r.status_code == 400 and r.json()["error_type"] == "unsupported"
        assert r.json()["error"].startswith("/v1/generate")
    assert httpx.get(f"{ner_server[0]}/info").json()["model"]["label_names"] == TAGS
    assert httpx.get(f"{squad_server[0]}/info").json()["model"]["qa"]["doc_stride"] == 8


@pytest.mark.parametrize(
    "body,field",
    [
        ({"inputs": {"question": "who?"}}, "context"),
        ({"inputs": {"question": "who?", "context": 3}}, "context"),
        ({"inputs": [{"question": "q", "context": "c", "extra": 1}]}, "extra"),
        ({"inputs": "just a text"}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"question": "q", "context": "c"}, "inputs"),
    ],
)
def test_bad_qa_bodies_get_422_naming_the_field(squad_server, body, field):
    r = httpx.post(f"{squad_server[0]}/v1/predict", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and field in r.json()["error"], r.json()


@pytest.mark.parametrize(
    "body,field",
    [
        ({"inputs": 5}, "inputs"),
        ({"inputs": [["a", "b"]]}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": "a", "top_k": 1}, "top_k"),
    ],
)
def test_bad_ner_bodies_get_422_naming_the_field(ner_server, body, field):
    r = httpx.post(f"{ner_server[0]}/v1/predict", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and field in r.json()["error"], r.json()


def test_too_many_inputs_413(ner_server):
    r = httpx.post(f"{ner_server[0]}/v1/predict", json={"inputs": ["a"] * 9})
    assert r.status_code == 413 and r.json()["error_type"] == "too_many_inputs"
