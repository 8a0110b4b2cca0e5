"""bertjax.inference: the run manifest (run.json), loading a run directory from it alone
(also after copying it elsewhere), featurisation and postprocessing."""

import json
import pathlib
import random
import shutil

import numpy as np
import pytest

from bertjax import config_lib, inference
from bertjax.inference import manifest as manifest_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["the", "movie", "was", "film", "plot", "acting", "really", "quite", "very", "a"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", *WORDS]


def _manifest(**overrides):
    m = {
        "format_version": 1,
        "task": "classify",
        "problem_type": "single_label",
        "label_names": ["neg", "pos"],
        "model": {"hidden_size": 8},
        "tokenizer": {"type": "wordpiece", "vocab_file": "vocab.txt", "do_lower_case": True},
        "max_seq_length": 16,
        "data": {"text_column": "review"},
        "best_metric": "eval/accuracy",
        "init_from": "",
    }
    m.update(overrides)
    return m


def test_manifest_round_trip_and_errors_name_the_file_and_field(tmp_path):
    path = manifest_lib.write_manifest(tmp_path, _manifest())
    assert path == str(tmp_path / "run.json")
    assert inference.read_manifest(tmp_path) == _manifest()
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind

    with pytest.raises(inference.ManifestError, match="nothing_here is not a directory"):
        inference.read_manifest(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(inference.ManifestError, match=r"empty/run\.json not found"):
        inference.read_manifest(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    with pytest.raises(inference.ManifestError, match=r"bad/run\.json: not valid JSON"):
        inference.read_manifest(bad)
    for override, message in [
        ({"task": "ner"}, "task 'ner' is not one of"),
        ({"problem_type": "ranking"}, "problem_type 'ranking'"),
        ({"format_version": 2}, "format_version 2"),
        ({"tokenizer": {"type": "wordpiece"}}, "tokenizer.vocab_file is missing"),
        ({"label_names": "pos"}, "label_names must be a list"),
    ]:
        with pytest.raises(inference.ManifestError, match=message):
            manifest_lib.write_manifest(tmp_path, _manifest(**override))
    broken = _manifest()
    del broken["model"]
    (bad / "run.json").write_text(json.dumps(broken))
    with pytest.raises(inference.ManifestError, match=r"run\.json: missing field\(s\) \['model'\]"):
        inference.read_manifest(bad)


def test_legacy_glue_run_file_reads_as_a_manifest(tmp_path):
    legacy = {
        "task": "stsb",
        "model": {"hidden_size": 8, "num_labels": 1},
        "max_seq_length": 32,
        "do_lower_case": False,
        "vocab_file": "vocab.txt",
        "init_from": "/x",
    }
    (tmp_path / "glue_run.json").write_text(json.dumps(legacy))
    m = inference.read_manifest(tmp_path)
    assert m["task"] == "glue" and m["problem_type"] == "regression"
    assert m["label_names"] is None and m["data"]["glue_task"] == "stsb"
    assert m["tokenizer"] == {
        "type": "wordpiece",
        "vocab_file": "vocab.txt",
        "do_lower_case": False,
    }
    assert m["max_seq_length"] == 32 and m["model"] == legacy["model"]
    legacy["task"] = "mnli"
    (tmp_path / "glue_run.json").write_text(json.dumps(legacy))
    m = inference.read_manifest(tmp_path)
    assert m["label_names"] == ["contradiction", "entailment", "neutral"]
    (tmp_path / "glue_run.json").write_text(json.dumps({"task": "mnli"}))
    with pytest.raises(inference.ManifestError, match="glue_run.json: not a valid legacy"):
        inference.read_manifest(tmp_path)


def _rows(n, rng):
    rows = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(WORDS, 3) + ["good" if label else "bad"]
        rng.shuffle(words)
        rows.append(" ".join(words) + f"\t{label}")
    return "\n".join(rows) + "\n"


@pytest.mark.slow  # about a minute on 2 CPU cores: a real (tiny) training run
def test_run_directory_copied_elsewhere_predicts_with_nothing_else(tmp_path):
    """A tiny GLUE run through train.run; its directory moved away from everything it was
    trained from (the data and vocabulary deleted) still loads and reproduces the dev eval."""
    from bertjax import train

    data = tmp_path / "data"
    (data / "SST-2").mkdir(parents=True)
    rng = random.Random(0)
    (data / "SST-2" / "train.tsv").write_text(_rows(32, rng))
    dev = _rows(12, rng)
    (data / "SST-2" / "dev.tsv").write_text(dev)
    (data / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    config = config_lib.load(
        f"{REPO / 'configs' / 'glue.py'}:sst2",
        {
            "model.preset": "tiny",
            "data.vocab_file": str(data / "vocab.txt"),
            "data.data_dir": str(data),
            "data.max_seq_length": 8,
            "batch_size": 16,
            "num_train_epochs": 2.0,
            "optim.learning_rate": 2e-3,
        },
    )
    workdir = tmp_path / "run"
    train.run(config, workdir)
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    best = max(r["eval/accuracy"] for r in records if "eval/accuracy" in r)

    manifest = json.loads((workdir / "run.json").read_text())
    assert manifest["task"] == "glue" and manifest["problem_type"] == "single_label"
    assert manifest["label_names"] == ["0", "1"] and manifest["max_seq_length"] == 8
    assert manifest["data"]["glue_task"] == "sst2" and manifest["best_metric"] == "eval/accuracy"
    assert manifest["tokenizer"] == {
        "type": "wordpiece",
        "vocab_file": "vocab.txt",
        "do_lower_case": True,
    }
    assert manifest["model"]["head"] == "classification" and manifest["model"]["num_labels"] == 2

    elsewhere = tmp_path / "copied" / "run"
    shutil.copytree(workdir, elsewhere)
    shutil.rmtree(workdir)
    shutil.rmtree(data)
    run = inference.load_run(elsewhere)
    assert run.label_names == ["0", "1"] and run.problem_type == "single_label"
    assert run.checkpoint == str(elsewhere) and run.max_seq_length == 8
    texts, gold = zip(*(line.split("\t") for line in dev.splitlines()[1:]), strict=True)
    results = inference.predict(run, list(texts), batch_size=5)
    accuracy = np.mean([r["label"] == g for r, g in zip(results, gold, strict=True)])
    assert accuracy == pytest.approx(best)
    for r in results:
        assert set(r) == {"label", "score", "probabilities"}
        assert r["score"] == max(r["probabilities"].values())
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)
    # The building blocks the server uses give the same logits as predict's batches.
    import functools

    import jax

    batch = inference.featurize(run, list(texts[:3]), pad_to=8)
    logits = jax.jit(functools.partial(inference.forward, run.module))(run.params, batch)
    np.testing.assert_allclose(
        np.asarray(logits), inference.predict_logits(run, list(texts[:3])), rtol=1e-5, atol=1e-6
    )
    # A run made before run.json (glue_run.json) loads the same.
    (elsewhere / "run.json").unlink()
    legacy = {"task": "sst2", "model": manifest["model"], "max_seq_length": 8,
              "do_lower_case": True, "vocab_file": "vocab.txt", "init_from": ""}  # fmt: skip
    (elsewhere / "glue_run.json").write_text(json.dumps(legacy))
    old_run = inference.load_run(elsewhere)
    assert old_run.label_names == ["0", "1"] and old_run.manifest["task"] == "glue"
    assert inference.predict(old_run, list(texts), batch_size=5) == results
    # A step number picks that training checkpoint.
    step = sorted(p.name for p in (elsewhere / "checkpoints").iterdir())[-1]
    assert inference.load_run(elsewhere, step).checkpoint.endswith(f"checkpoints/{step}")
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 999"):
        inference.load_run(elsewhere, "999")


def _fake_run(problem_type, label_names, max_seq_length=8):
    from bertjax import models
    from bertjax.data.tokenizer import WordPieceTokenizer

    cfg = models.get_config("tiny", vocab_size=len(VOCAB), head="classification")
    return inference.LoadedRun(
        manifest={},
        model_config=cfg,
        module=None,
        params=None,
        tokenizer=WordPieceTokenizer(VOCAB, do_lower_case=True),
        label_names=label_names,
        problem_type=problem_type,
        max_seq_length=max_seq_length,
    )


def test_featurize_singles_and_pairs_truncates_and_pads():
    run = _fake_run("single_label", ["a", "b"])
    single = inference.featurize(run, ["good film", "the movie was very very good bad"])
    assert single["input_ids"].shape == (2, 8)
    assert single["input_ids"][0].tolist() == [2, 5, 10, 3, 0, 0, 0, 0]  # [CLS] good film [SEP]
    assert single["attention_mask"][1].tolist() == [1] * 8  # truncated to max_seq_length
    assert single["input_ids"][1, -1] == 3  # still ends in [SEP]
    pair = inference.featurize(run, ["good"], ["bad plot"], pad_to=10)
    assert pair["input_ids"][0].tolist() == [2, 5, 3, 6, 11, 3, 0, 0, 0, 0]
    assert pair["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="pad_to=4 is shorter than the longest row"):
        inference.featurize(run, ["the movie was good"], pad_to=4)


def test_postprocess_per_problem_type():
    logits = np.array([[2.0, 0.0, -3.0], [-1.0, 1.0, 0.5]])
    single = inference.postprocess(_fake_run("single_label", ["x", "y", "z"]), logits)
    assert [r["label"] for r in single] == ["x", "y"]
    assert single[0]["score"] == pytest.approx(np.exp(2) / np.exp([2.0, 0.0, -3.0]).sum())
    multi = inference.postprocess(_fake_run("multi_label", ["x", "y", "z"]), logits)
    assert [r["labels"] for r in multi] == [["x"], ["y", "z"]]
    assert multi[0]["probabilities"]["y"] == pytest.approx(0.5)
    reg = inference.postprocess(_fake_run("regression", None), np.array([[3.25], [-1.0]]))
    assert reg == [{"value": 3.25}, {"value": -1.0}]
