"""Loaded runs for the explain tests: all-MiniLM-L6-v2 with a classifier head, tiny MLM / GPT."""

from __future__ import annotations

import pathlib

import numpy as np

from bertjax import convert, inference, models
from bertjax.data.tokenizer import WordPieceTokenizer


def minilm_classifier(minilm_dir: pathlib.Path, seed: int = 0) -> inference.LoadedRun:
    """The real MiniLM encoder + pooler with a fresh 2-way classifier (std 0.2, seeded)."""
    cfg, params = convert.from_hf(minilm_dir, head="encoder")
    cfg = cfg.replace(head="classification", num_labels=2)
    rng = np.random.default_rng(seed)
    params = dict(params)
    params["classifier"] = {
        "kernel": rng.normal(0.0, 0.2, (cfg.hidden_size, 2)).astype(np.float32),
        "bias": np.zeros(2, np.float32),
    }
    tokenizer = WordPieceTokenizer.from_vocab_file(
        str(minilm_dir / "vocab.txt"), do_lower_case=True
    )
    return inference.LoadedRun(
        manifest={"task": "classify"},
        model_config=cfg,
        module=models.build(cfg),
        params=params,
        tokenizer=tokenizer,
        label_names=["negative", "positive"],
        problem_type="single_label",
        max_seq_length=64,
        workdir=str(minilm_dir),
    )


def tiny_run(minilm_dir: pathlib.Path, head: str, seed: int = 0) -> inference.LoadedRun:
    """A random tiny BERT (MiniLM's vocabulary) with `head` ("mlm", "pretraining")."""
    import jax

    tokenizer = WordPieceTokenizer.from_vocab_file(
        str(minilm_dir / "vocab.txt"), do_lower_case=True
    )
    cfg = models.get_config("tiny", vocab_size=tokenizer.vocab_size, head=head)
    module = models.build(cfg)
    batch = {"input_ids": np.zeros((1, 8), np.int32)}
    params = jax.tree_util.tree_map(np.asarray, module.init(jax.random.key(seed), batch)["params"])
    params = jax.tree_util.tree_map(np.asarray, _unbox(params))
    return inference.LoadedRun(
        manifest={"task": "bert_pretrain"},
        model_config=cfg,
        module=module,
        params=params,
        tokenizer=tokenizer,
        label_names=None,
        problem_type=None,
        max_seq_length=32,
    )


def _unbox(tree):
    from flax.core import meta

    return meta.unbox(tree)
