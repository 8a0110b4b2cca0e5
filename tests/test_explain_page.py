"""The explanation HTML and the server's try-it page in a real headless chromium, offline."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from browser import Browser
from serve_util import running_server, small_settings, tiny_backend

from bertjax.explain import explainer, page, render
from bertjax.serve.app import create_app

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def run():
    return page.as_run(tiny_backend(num_labels=2))


def test_html_is_self_contained_and_renders_offline(run, tmp_path):
    result = explainer.explain(run, "the movie was very good", steps=8)
    html = render.to_html(result)
    assert not EXTERNAL.search(html) and not EXTERNAL.search(page.PAGE)
    assert "http://" not in html and "https://" not in html
    path = tmp_path / "explain.html"
    path.write_text(html, encoding="utf-8")
    browser = Browser()
    try:
        browser.open(path.as_uri())
        tokens = browser.evaluate(
            "Array.from(document.querySelectorAll('#tokens .tok')).map(e => e.textContent)"
        )
        assert tokens == result["tokens"]
        cells = browser.evaluate("document.querySelectorAll('table.attn td').length")
        assert cells == len(tokens) ** 2
        # The layer/head picker redraws: head 0 of layer 0 shows that head's probabilities.
        first = browser.evaluate(
            "document.getElementById('layer').value='0';document.getElementById('head').value='0';"
            "document.getElementById('head').onchange();"
            "document.querySelector('table.attn td').title"
        )
        want = result["attention"]["probs"][0][0][0][0]
        assert first.endswith(f"{want:.3f}"), first
        browser.screenshot(tmp_path / "explain.png")
        assert browser.failed_requests == []
    finally:
        browser.close()
    assert (tmp_path / "explain.png").read_bytes()[:4] == b"\x89PNG"


def test_server_page_shows_a_prediction_for_typed_text(tmp_path):
    backend = tiny_backend(num_labels=2)
    # Few buckets: the server compiles them all before /health says ready.
    app = create_app(backend, small_settings(max_batch_size=2, max_batch_tokens=64,
                                             max_client_batch_size=2))  # fmt: skip
    with running_server(app, ready_timeout=900) as url:
        # The JSON route first: the same result as the library, and bad input named.
        body = {"text": "a good film", "method": "grad_x_input"}
        answer = httpx.post(f"{url}/v1/explain", json=body, timeout=300).json()
        direct = explainer.explain(page.as_run(backend), "a good film", method="grad_x_input")
        assert answer["tokens"] == direct["tokens"]
        assert answer["attributions"]["raw"] == pytest.approx(direct["attributions"]["raw"])
        bad = httpx.post(f"{url}/v1/explain", json={"text": "x", "colour": 1}, timeout=60)
        assert bad.status_code == 422 and "colour" in bad.json()["error"]
        bad = httpx.post(f"{url}/v1/explain", json={"text": "x", "target": "nope"}, timeout=60)
        assert bad.status_code == 422 and "'nope' is not one of the run's labels" in bad.text

        browser = Browser()
        try:
            browser.open(url + "/")
            browser.evaluate(
                "document.getElementById('text').value = "
                + json.dumps("the plot was boring")
                + "; document.getElementById('go').click(); true"
            )
            text = browser.wait_for(
                "document.getElementById('prediction').textContent", timeout_s=300
            )
            assert "prediction:" in text and ("class_0" in text or "class_1" in text)
            tokens = browser.evaluate(
                "Array.from(document.querySelectorAll('#tokens .tok')).map(e => e.textContent)"
            )
            assert tokens == ["[CLS]", "the", "plot", "was", "boring", "[SEP]"]
            assert browser.evaluate("document.querySelectorAll('table.attn td').length") == 36
            browser.screenshot(tmp_path / "page.png")
            assert browser.failed_requests == []
        finally:
            browser.close()
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"


def test_server_explains_qa_and_ner_runs(minilm_dir, tmp_path):
    """A squad run served from its directory: POST /v1/explain takes question + context and
    explains the predicted answer span; the page shows question and context fields and outlines
    the span. An NER run's route explains a word's tag and names a bad word index."""
    from explain_runs import tiny_span_run, write_run_dir
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from bertjax.inference import load_run
    from bertjax.serve.loading import load_backend

    question, context = "Who owns the red car?", "The red car's owner is Alice. It is red."
    qa_dir = write_run_dir(tmp_path / "squad", tiny_span_run(minilm_dir, "squad"), "squad")
    ner_dir = write_run_dir(tmp_path / "ner", tiny_span_run(minilm_dir, "ner"), "ner")

    ner_app = FastAPI()
    page.add_routes(ner_app, load_backend(str(ner_dir)))
    with TestClient(ner_app) as client:
        body = {"text": "Carol Smith went to Oslo.", "word": 4, "target": "B-LOC"}
        answer = client.post("/v1/explain", json=body).json()
        assert (answer["target"]["word"], answer["target"]["tag"]) == ("Oslo", "B-LOC")
        bad = client.post("/v1/explain", json={**body, "word": 7})
        assert bad.status_code == 422 and "--word=7 is out of range" in bad.json()["error"]

    app = create_app(load_backend(str(qa_dir)), small_settings(
        max_batch_size=2, max_batch_tokens=64, max_client_batch_size=2))  # fmt: skip
    with running_server(app, ready_timeout=900) as url:
        body = {"question": question, "context": context, "method": "grad_x_input"}
        answer = httpx.post(f"{url}/v1/explain", json=body, timeout=300).json()
        direct = explainer.explain(load_run(qa_dir), question, context, method="grad_x_input")
        # The server pads to a 16-token bucket: float32 sums in another order, so the span's
        # score (and the attributions below) agree to rounding, everything else exactly.
        target, direct_target = dict(answer["target"]), dict(direct["target"])
        assert target.pop("value") == pytest.approx(direct_target.pop("value"), rel=1e-5)
        assert target == direct_target and target["kind"] == "answer_span"
        assert answer["prediction"]["text"] == answer["target"]["text"]
        want = pytest.approx(direct["attributions"]["raw"], rel=1e-4, abs=1e-7)
        assert answer["attributions"]["raw"] == want
        bad = httpx.post(f"{url}/v1/explain", json={"text": question}, timeout=60)
        assert bad.status_code == 422 and '"question" and "context"' in bad.json()["error"]
        bad = httpx.post(f"{url}/v1/explain", timeout=60,
                         json={**body, "answer_start": 3, "answer_end": 99})  # fmt: skip
        assert bad.status_code == 422 and "--answer_start=3 --answer_end=99" in bad.text

        browser = Browser()
        try:
            browser.open(url + "/")
            browser.wait_for(
                "document.getElementById('pair').placeholder === 'Context'", timeout_s=60
            )
            browser.evaluate(
                f"document.getElementById('text').value = {json.dumps(question)};"
                f"document.getElementById('pair').value = {json.dumps(context)};"
                "document.getElementById('go').click(); true"
            )
            text = browser.wait_for(
                "document.getElementById('prediction').textContent", timeout_s=300
            )
            assert "answer:" in text and "answer span" in text, text
            outlined = browser.evaluate(
                "Array.from(document.querySelectorAll('#tokens .tok.target'))"
                ".map(e => e.textContent)"
            )
            t = direct["target"]
            assert outlined == direct["tokens"][t["token_start"] : t["token_end"] + 1]
            browser.screenshot(tmp_path / "qa_page.png")
            assert browser.failed_requests == []
        finally:
            browser.close()
