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
