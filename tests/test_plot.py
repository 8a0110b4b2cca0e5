"""bertjax.plot: curves from metrics.jsonl, several runs overlaid, clear errors."""

from __future__ import annotations

import json

import pytest

from bertjax import plot


def _write(path, records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_overlays_runs_and_groups_train_and_eval(tmp_path):
    for i, name in enumerate(("lr_a", "lr_b")):
        _write(tmp_path / name, [
            {"step": 10, "loss": 1.0 - i * 0.1, "learning_rate": 1e-4, "accuracy": 0.5,
             "examples_per_sec": 30.0, "grad_norm": 2.0},
            {"step": 20, "loss": 0.5, "learning_rate": 5e-5, "eval/accuracy": 0.8,
             "eval/loss": 0.6, "eval/examples": 100.0},
        ])  # fmt: skip
    out = tmp_path / "curves.png"
    names = plot.main(["--workdir", str(tmp_path / "lr_a"), str(tmp_path / "lr_b"),
                       "--output", str(out)])  # fmt: skip
    assert names == 0 and out.read_bytes()[:4] == b"\x89PNG"
    layout = plot.panels([plot.read_metrics(tmp_path / "lr_a")])
    assert layout == [
        ("loss", ["eval/loss", "loss"]),
        ("accuracy", ["accuracy", "eval/accuracy"]),
        ("learning rate", ["learning_rate"]),
        ("throughput", ["examples_per_sec"]),
    ]


def test_bad_metrics_name_the_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n{"loss": 1\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        plot.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: expected an object with an int 'step'"):
        plot.read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere/metrics.jsonl not found"):
        plot.read_metrics(tmp_path / "nowhere")
