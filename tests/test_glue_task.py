"""GLUE fine-tuning end to end: a tiny model learns a tiny task through the real training loop,
init_from a bertjax pretraining checkpoint and from a Hugging Face checkpoint, predictions and
GLUE submission files, configs, and the sweep launcher's selection and tables."""

import functools
import json
import pathlib
import random
import sys

import jax
import numpy as np
import pytest

from bertjax import checkpointing, config_lib, models
from bertjax.tasks import glue as glue_task

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "glue.py")
WORDS = ["the", "movie", "was", "film", "plot", "acting", "really", "quite", "very", "a"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", *WORDS]


def _sst2_rows(n, rng):
    rows = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(WORDS, 3) + ["good" if label else "bad"]
        rng.shuffle(words)
        rows.append(" ".join(words) + f"\t{label}")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def tiny_glue(tmp_path_factory):
    """A learnable SST-2 stand-in (the label is the word good / bad) and its vocabulary."""
    root = tmp_path_factory.mktemp("tiny_glue")
    rng = random.Random(0)
    (root / "SST-2").mkdir()
    (root / "SST-2" / "train.tsv").write_text(_sst2_rows(64, rng))
    (root / "SST-2" / "dev.tsv").write_text(_sst2_rows(24, rng))
    test = ["index\tsentence"] + [f"{i}\t{s}" for i, s in enumerate(["good film", "bad plot"])]
    (root / "SST-2" / "test.tsv").write_text("\n".join(test) + "\n")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return root


def _config(task="sst2", **overrides):
    return config_lib.load(f"{CONFIG}:{task}", overrides)


@pytest.fixture(scope="module")
def pretrain_workdir(tmp_path_factory, tiny_glue):
    """A bertjax pretraining run directory: checkpoints/<step>/state (+ data), vocab.txt."""
    workdir = tmp_path_factory.mktemp("pretrain_run")
    cfg = models.get_config(
        "tiny", vocab_size=len(VOCAB), head="pretraining", max_position_embeddings=128
    )
    params = jax.tree.map(np.asarray, _fresh_params(cfg, seed=7))
    ckpt = checkpointing.Checkpointer(workdir, keep=1, async_save=False)
    state = {"step": np.int32(5), "params": params, "rng": np.zeros(2, np.uint32)}
    ckpt.save(5, state, {"epoch": 0})
    ckpt.close()
    (workdir / "vocab.txt").write_text((tiny_glue / "vocab.txt").read_text())
    (workdir / "vocab_meta.json").write_text(json.dumps({"do_lower_case": True}))
    return workdir, params


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = np.asarray(v)
    return out


@functools.cache
def _fresh_params(cfg, seed=0):
    """Freshly initialised params of `cfg` as numpy (cached: compiling init is the slow part)."""
    import flax

    batch = models.example_batch(cfg)
    init = jax.jit(models.build(cfg).init)  # compiled: much faster than op-by-op on CPU
    return jax.tree.map(
        np.asarray, flax.core.meta.unbox(init(jax.random.key(seed), batch)["params"])
    )


# ---------------------------------------------------------------------------------------------
# The end-to-end run
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_learns_tiny_task_end_to_end(tiny_glue, pretrain_workdir, tmp_path):
    """Fine-tunes from a bertjax pretraining checkpoint through train.run, then predicts."""
    from bertjax import predict, train

    workdir = tmp_path / "run"
    config = _config(
        **{
            "init_from": str(pretrain_workdir[0]),
            "data.data_dir": str(tiny_glue),
            "data.max_seq_length": 8,
            "batch_size": 16,
            "num_train_epochs": 3.0,
            "optim.learning_rate": 2e-3,
            "log_every": 4,
        }
    )
    result = train.run(config, workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]  # the end of every epoch (64 / 16 = 4 steps)
    assert evals[-1]["eval/accuracy"] >= 0.9, evals
    assert evals[0]["eval/loss"] > evals[-1]["eval/loss"]
    best = max(evals, key=lambda r: r["eval/accuracy"])
    assert result.step == 12 and (workdir / "best").is_dir()

    # The workdir alone rebuilds the model; predictions on dev reproduce the best eval.
    predictor = predict.load_predictor(str(workdir))
    dev = predict.read_inputs(str(tiny_glue / "SST-2" / "dev.tsv"), predictor.task)
    predictions, probabilities = predictor.predict(dev, batch_size=8)
    gold = np.array([e.label for e in dev])
    assert np.mean(predictions == gold) == pytest.approx(best["eval/accuracy"])
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-6)
    out = tmp_path / "preds.jsonl"
    predict.write_predictions(str(out), predictor.task, dev, predictions, probabilities)
    row = json.loads(out.read_text().splitlines()[0])
    assert set(row) == {"index", "prediction", "label", "probabilities"}
    assert set(row["probabilities"]) == {"0", "1"}
    (path,) = predict.write_submission(predictor, str(tmp_path / "sub"), str(tiny_glue))
    assert pathlib.Path(path).name == "SST-2.tsv"
    assert pathlib.Path(path).read_text().splitlines() == ["index\tprediction", "0\t1", "1\t0"]


# ---------------------------------------------------------------------------------------------
# init_from
# ---------------------------------------------------------------------------------------------


def test_init_from_bertjax_pretraining_checkpoint(tiny_glue, pretrain_workdir):
    workdir, pretrained = pretrain_workdir
    # A step directory works too: the vocabulary is found in the run directory above it.
    for init_from in (workdir, workdir / "checkpoints" / "5"):
        config = _config(**{"init_from": str(init_from), "data.data_dir": str(tiny_glue)})
        tokenizer = glue_task.resolve_tokenizer(config)
        assert tokenizer.vocab == VOCAB
        cfg = glue_task.model_config(config, tokenizer.vocab_size)
        assert (cfg.head, cfg.num_labels, cfg.hidden_size, cfg.num_layers) == (
            "classification", 2, 128, 2,
        )  # fmt: skip
        assert (cfg.num_heads, cfg.max_position_embeddings, cfg.vocab_size) == (2, 128, len(VOCAB))
        fresh = _fresh_params(cfg)
        params = _flat(glue_task.init_params(config, cfg, fresh))
        source, fresh = _flat(pretrained), _flat(fresh)
        assert set(params) == set(fresh)
        for key, value in params.items():
            if key[0] == "classifier":
                np.testing.assert_array_equal(value, fresh[key])
            else:
                np.testing.assert_array_equal(value, source[key], err_msg=str(key))
        assert not any(k[0] in ("mlm", "nsp") for k in params)


def test_init_from_mismatches_are_errors(tiny_glue, pretrain_workdir, tmp_path):
    workdir = str(pretrain_workdir[0])
    config = _config(**{"init_from": workdir, "model.preset": "mini"})
    with pytest.raises(
        glue_task.InitFromError, match="size mismatch.*hidden_size: preset 256 != checkpoint 128"
    ):
        glue_task.model_config(config, len(VOCAB))
    config = _config(**{"init_from": workdir, "model.vocab_size": 99})
    with pytest.raises(
        glue_task.InitFromError, match="vocab_size=99 but the checkpoint's embedding"
    ):
        glue_task.model_config(config, len(VOCAB))
    with pytest.raises(
        glue_task.InitFromError, match="tokenizer has 40 tokens but .* only 17 rows"
    ):
        glue_task.model_config(_config(init_from=workdir), 40)
    other_vocab = tmp_path / "other_vocab.txt"
    other_vocab.write_text("\n".join([*VOCAB, "extra"]) + "\n")
    config = _config(**{"init_from": workdir, "data.vocab_file": str(other_vocab)})
    with pytest.raises(
        glue_task.InitFromError,
        match="vocabulary mismatch: config.data.vocab_file=.*18 tokens.*17 tokens.*line 18",
    ):
        glue_task.resolve_tokenizer(config)
    config = _config(**{"init_from": workdir, "data.do_lower_case": False})
    with pytest.raises(glue_task.InitFromError, match="casing mismatch"):
        glue_task.resolve_tokenizer(config)
    config = _config(**{"init_from": workdir, "data.max_seq_length": 129})
    with pytest.raises(
        ValueError, match="max_seq_length=129 exceeds .* max_position_embeddings=128"
    ):
        glue_task.model_config(config, len(VOCAB))
    with pytest.raises(glue_task.InitFromError, match="neither a Hugging Face checkpoint"):
        glue_task.model_config(_config(init_from=str(tmp_path)), len(VOCAB))
    with pytest.raises(glue_task.InitFromError, match="no vocabulary"):
        glue_task.resolve_tokenizer(_config(**{"model.preset": "tiny"}))


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory, tiny_glue):
    """A Hugging Face BertModel directory written by transformers itself."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.BertModel(hf_config).eval()
    path = tmp_path_factory.mktemp("hf_bert")
    model.save_pretrained(path)
    (path / "vocab.txt").write_text((tiny_glue / "vocab.txt").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return path, model


def test_init_from_hugging_face_checkpoint(tiny_glue, tiny_hf_dir):
    import torch

    path, hf_model = tiny_hf_dir
    config = _config(
        "stsb",
        **{"init_from": str(path), "data.data_dir": str(tiny_glue), "data.max_seq_length": 16},
    )
    tokenizer = glue_task.resolve_tokenizer(config)
    cfg = glue_task.model_config(config, tokenizer.vocab_size)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_labels) == (32, 2, 4, 1)
    params = glue_task.init_params(config, cfg, _fresh_params(cfg))
    ids = np.array([[2, 5, 7, 9, 3, 6, 8, 3, 0, 0]], np.int32)
    batch = {
        "input_ids": ids,
        "token_type_ids": np.array([[0] * 5 + [1] * 3 + [0] * 2], np.int32),
        "attention_mask": (ids > 0).astype(np.int32),
    }
    ours = jax.jit(models.build(cfg).apply)({"params": params}, batch)["pooled"]
    with torch.no_grad():
        theirs = hf_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(ours), theirs.pooler_output.numpy(), atol=2e-5)
    # The HF tokenizer_config says uncased: a cased run is refused.
    config = _config(**{"init_from": str(path), "data.do_lower_case": False})
    with pytest.raises(glue_task.InitFromError, match="casing mismatch"):
        glue_task.resolve_tokenizer(config)


def test_init_from_real_minilm_config(minilm_dir):
    config = _config("rte", init_from=str(minilm_dir))
    cfg = glue_task.model_config(config, 30522)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (
        384, 6, 12, 1536,
    )  # fmt: skip
    assert (cfg.vocab_size, cfg.num_labels, cfg.head) == (30522, 2, "classification")
    assert glue_task.resolve_tokenizer(config).vocab_size == 30522


# ---------------------------------------------------------------------------------------------
# Configs, metrics plumbing
# ---------------------------------------------------------------------------------------------


def test_configs_of_every_task():
    keys = {}
    for name in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        config = _config(name)
        assert config.task == "glue" and config.data.task == name
        assert config.optim.warmup_proportion == 0.1 and config.model.hidden_dropout == 0.1
        keys[name] = glue_task.best_metric(config)[0]
    assert keys["cola"] == "eval/mcc" and keys["stsb"] == "eval/pearson"
    assert keys["mrpc"] == keys["qqp"] == "eval/f1"
    assert keys["mnli"] == "eval_matched/accuracy"
    with pytest.raises(ValueError, match="unknown GLUE task 'stsc'; valid tasks"):
        _config("stsc")
    with pytest.raises(ValueError, match="'ax' has no training set"):
        _config("ax")


def test_eval_summary_uses_the_task_metrics_and_drops_padding():
    rng = np.random.default_rng(0)
    label, pred = rng.integers(0, 2, 20), rng.integers(0, 2, 20)
    weight = np.ones(20, np.float32)
    weight[-4:] = 0  # padding rows: their garbage must not count
    out = {"label": label, "pred": pred, "weight": weight, "loss": rng.random(20)}
    from sklearn.metrics import matthews_corrcoef

    summary = glue_task.eval_summary(_config("cola"), out)
    assert set(summary) == {"mcc", "accuracy", "loss"}
    assert summary["mcc"] == pytest.approx(matthews_corrcoef(label[:16], pred[:16]))
    assert summary["loss"] == pytest.approx(out["loss"][:16].mean())
    scores = rng.random(20) * 5
    out = {"label": scores, "pred": scores + rng.random(20), "weight": weight, "loss": out["loss"]}
    assert set(glue_task.eval_summary(_config("stsb"), out)) == {"pearson", "spearman", "loss"}


def test_loss_is_averaged_over_real_rows_only():
    cfg = models.get_config("tiny", vocab_size=len(VOCAB), head="classification", num_labels=1,
                            max_position_embeddings=16, num_layers=1)  # fmt: skip
    model = models.build(cfg)
    params = _fresh_params(cfg)
    batch = {
        "input_ids": np.array([[2, 5, 3, 0], [2, 6, 3, 0], [2, 7, 3, 0]], np.int32),
        "token_type_ids": np.zeros((3, 4), np.int32),
        "attention_mask": np.array([[1, 1, 1, 0]] * 3, np.int32),
        "labels": np.array([1.0, 4.0, 123.0], np.float32),
        "weights": np.array([1.0, 1.0, 0.0], np.float32),
    }
    loss, _ = jax.jit(lambda p, b: glue_task.loss_fn(None, model, p, b, None, False))(params, batch)
    logits = jax.jit(model.apply)({"params": params}, batch)["logits"][:, 0]
    assert float(loss) == pytest.approx(float(np.mean((logits[:2] - batch["labels"][:2]) ** 2)))


# ---------------------------------------------------------------------------------------------
# The sweep launcher
# ---------------------------------------------------------------------------------------------

FAKE_RUN = r"""
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
wd, seed = args["--workdir"], int(args["--config.seed"])
lr = float(args["--config.optim.learning_rate"])
score = {5e-5: 0.60, 2e-5: 0.70}[lr] + 0.01 * seed
with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    f.write(json.dumps({"step": 2, "eval/accuracy": score + 0.5, "eval/loss": 0.1}) + "\n")
    final = {"step": 4, "eval/accuracy": score, "eval/f1": 0.5, "eval/loss": 0.2}
    f.write(json.dumps(final) + "\n")
with open(os.path.join(wd, "glue_run.json"), "w") as f:
    json.dump({"task": "rte"}, f)
with open(os.path.join(wd, "device.txt"), "w") as f:
    f.write(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
"""


def test_sweep_runs_the_grid_and_selects_on_dev(tmp_path):
    sys.path.insert(0, str(REPO / "launch"))
    import glue_sweep

    assert len(glue_sweep.plan(["rte", "mnli"], tmp_path, seeds=[0, 1])) == 2 * 4 * 2 * 3 * 2
    runs = glue_sweep.plan(["RTE"], tmp_path, [0, 1, 2], [5e-5, 2e-5], [32], [3])
    cmd = glue_sweep.command(runs[0], "/ckpt", ["--config.data.max_seq_length=64"])
    assert f"--config={CONFIG}:rte" in cmd and "--config.num_train_epochs=3.0" in cmd
    assert cmd[-1] == "--config.data.max_seq_length=64"

    def fake(run):
        return [sys.executable, "-c", FAKE_RUN, *glue_sweep.command(run, "/ckpt", [])[3:]]

    failed = glue_sweep.execute(runs, fake, jobs=2, devices=["0", "1"], poll_seconds=0.05)
    assert failed == []
    assert {(r.workdir / "device.txt").read_text() for r in runs} == {"0", "1"}
    (row,) = glue_sweep.write_results(tmp_path, runs)
    # lr 2e-5 wins (0.70, 0.71, 0.72 at the end of training); the paper reports the final eval.
    assert (row["learning_rate"], row["batch_size"], row["epochs"]) == (2e-5, 32, 3)
    assert row["median"] == pytest.approx(0.71) and row["mean"] == pytest.approx(0.71)
    assert row["std"] == pytest.approx(0.01) and row["seeds"] == 3
    assert row["median eval/f1"] == 0.5 and "median eval/loss" not in row
    assert (
        "| rte | eval/accuracy | 2e-05 | 32 | 3 | 3 | 0.7100 | 0.7100 ± 0.0100 |"
        in (tmp_path / "results.md").read_text()
    )
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + 6
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (best_row,) = glue_sweep.summarise(runs, score="best")[0]
    assert best_row["median"] == pytest.approx(1.21)  # the best epoch (step 2) instead
    # A second launch finds everything done and runs nothing.
    assert glue_sweep.execute(runs, lambda r: ["false"], jobs=1) == []
