"""causal_lm in the one training loop: a tiny GPT-2's perplexity falls on the embedded corpus,
and the run directory is what `bertjax.generate_cli` reads."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import numpy as np
import pytest

from bertjax import config_lib, train
from bertjax.generate import generate
from bertjax.generate_cli import load_model

# One tiny training run (~30 s on 2 cores) shared by the tests of this module.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 512


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gpt_tiny")
    config = config_lib.load(
        REPO / "configs" / "gpt_tiny_lm.py",
        {
            "model.max_position_embeddings": 64,
            "model.hidden_dropout": 0.0,
            "model.attention_dropout": 0.0,
            "data.vocab_size": VOCAB,
            "data.max_seq_length": 64,
            "batch_size": 16,
            "total_steps": 60,
            "log_every": 10,
            "eval_every": 20,
            "eval_batches": 4,
            "checkpoint_every": 60,
            "optim.warmup_steps": 10,
        },
    )
    result = train.run(config, workdir, devices=jax.devices()[:1])
    return workdir, result


def test_perplexity_falls(tiny_run):
    _, result = tiny_run
    evals = [r for r in result.records if "eval/perplexity" in r]
    train_logs = [r for r in result.records if "perplexity" in r]
    assert [r["step"] for r in evals] == [20, 40, 60]
    # Starts near uniform over the vocabulary, then falls well below it, train and eval.
    assert train_logs[0]["loss"] > 0.8 * math.log(VOCAB)
    assert train_logs[-1]["perplexity"] < 0.5 * train_logs[0]["perplexity"]
    assert evals[0]["eval/perplexity"] < VOCAB / 2
    assert evals[-1]["eval/perplexity"] < 0.85 * evals[0]["eval/perplexity"]
    assert evals[-1]["eval/perplexity"] < evals[1]["eval/perplexity"]
    for r in evals:
        assert math.isclose(r["eval/perplexity"], math.exp(r["eval/loss"]), rel_tol=1e-4)


def test_run_directory_feeds_generation(tiny_run):
    workdir, _ = tiny_run
    run = json.loads((workdir / "run.json").read_text())
    assert run["task"] == "causal_lm" and run["tokenizer"] == {
        "type": "byte_bpe",
        "directory": "tokenizer",
    }
    assert run["model"]["model_type"] == "gpt2" and run["model"]["vocab_size"] == VOCAB
    model, params, tokenizer = load_model(str(workdir))
    prompt = [tokenizer.eot_id, *tokenizer.encode("The import statement").tolist()]
    out = generate(model, params, [prompt], 12, temperature=0.0, eos_id=tokenizer.eot_id)[0]
    assert len(prompt) < len(out) <= len(prompt) + 12
    np.testing.assert_array_equal(out[: len(prompt)], prompt)
    assert isinstance(tokenizer.decode(out[len(prompt) :]), str)


def test_exported_hf_directory_generates_the_same(tiny_run, tmp_path):
    """to_hf + the run's tokenizer make a Hugging Face directory the CLI loads, same tokens."""
    from bertjax.convert import to_hf

    workdir, _ = tiny_run
    model, params, tokenizer = load_model(str(workdir))
    to_hf(model.cfg, params, tmp_path)
    tokenizer.save(tmp_path)
    hf_model, hf_params, hf_tokenizer = load_model(str(tmp_path))
    assert hf_model.cfg.vocab_size == model.cfg.vocab_size
    prompt = hf_tokenizer.encode("A module is").tolist()
    ours = generate(model, params, [prompt], 8, temperature=0.0)[0]
    np.testing.assert_array_equal(
        generate(hf_model, hf_params, [prompt], 8, temperature=0.0)[0], ours
    )
