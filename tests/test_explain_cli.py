"""python -m bertjax.explain on a run directory: JSON, HTML and PNG outputs, bad flags."""

from __future__ import annotations

import json

import pytest
from flax.core import meta
from serve_util import VOCAB, tiny_classifier

from bertjax import checkpointing
from bertjax.data.tokenizer import WordPieceTokenizer
from bertjax.explain import __main__ as cli
from bertjax.inference import manifest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it: run.json, vocab.txt, best/ params."""
    workdir = tmp_path_factory.mktemp("run")
    cfg, _, params = tiny_classifier(num_labels=2)
    best = checkpointing.BestCheckpointer(workdir, "eval/accuracy", "max")
    best.maybe_save(1, meta.unbox(params), {"eval/accuracy": 1.0})  # as train.py saves them
    best.close()
    # vocab.txt may not repeat a token (serve_util's has "a" twice): same size, unique names.
    vocab = [t if t not in VOCAB[:i] else f"[unused{i}]" for i, t in enumerate(VOCAB)]
    tokenizer = WordPieceTokenizer(vocab, do_lower_case=True)
    entry = manifest.save_tokenizer(workdir, tokenizer)
    manifest.write_manifest(workdir, {
        "format_version": 1, "task": "classify", "problem_type": "single_label",
        "label_names": ["negative", "positive"], "model": cfg.to_dict(), "tokenizer": entry,
        "max_seq_length": 32,
    })  # fmt: skip
    return workdir


def test_cli_writes_json_html_png(run_dir, tmp_path, capsys):
    out = tmp_path / "e"
    code = cli.main([f"--workdir={run_dir}", "--text=the movie was good", "--target=negative",
                     "--steps=16", f"--output={out}.json,{out}.html,{out}.png"])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["tokens"] == ["[CLS]", "the", "movie", "was", "good", "[SEP]"]
    assert result["target"]["label"] == "negative" and result["method"]["steps"] == 16
    assert len(result["attributions"]["raw"]) == 6
    assert result["prediction"]["label"] in ("negative", "positive")
    assert "completeness delta" in capsys.readouterr().out
    html = (tmp_path / "e.html").read_text()
    assert "http://" not in html and "https://" not in html and '"tokens"' in html
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_unknown_output_and_method(run_dir, tmp_path):
    with pytest.raises(SystemExit):
        cli.main([f"--workdir={run_dir}", "--text=x", f"--output={tmp_path}/e.svg"])
    with pytest.raises(SystemExit):
        cli.main(
            [f"--workdir={run_dir}", "--text=x", "--method=lime", f"--output={tmp_path}/e.json"]
        )
