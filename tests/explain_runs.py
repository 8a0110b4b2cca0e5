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


NER_TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
QA_DATA = {
    "doc_stride": 8,
    "max_query_length": 12,
    "n_best_size": 10,
    "max_answer_length": 12,
    "version_2": False,
    "null_score_diff_threshold": 0.0,
}


def tiny_span_run(minilm_dir: pathlib.Path, task: str, seed: int = 0) -> inference.LoadedRun:
    """A random tiny BERT (MiniLM's vocabulary) as a `squad` or `ner` run would load: the
    question-answering or token-classification head and run.json's fields (QA windows of 48
    tokens, 8 apart; five IOB2 tags)."""
    import jax

    tokenizer = WordPieceTokenizer.from_vocab_file(
        str(minilm_dir / "vocab.txt"), do_lower_case=True
    )
    head = {"squad": "question_answering", "ner": "token_classification"}[task]
    labels = len(NER_TAGS) if task == "ner" else 2
    cfg = models.get_config("tiny", vocab_size=tokenizer.vocab_size, head=head, num_labels=labels)
    module = models.build(cfg)
    batch = {"input_ids": np.zeros((1, 8), np.int32)}
    params = jax.tree_util.tree_map(np.asarray, _unbox(module.init(jax.random.key(seed), batch)))
    manifest = {"task": task, "data": QA_DATA} if task == "squad" else {"task": task}
    return inference.LoadedRun(
        manifest=manifest,
        model_config=cfg,
        module=module,
        params=params["params"],
        tokenizer=tokenizer,
        label_names=NER_TAGS if task == "ner" else None,
        problem_type=None,
        max_seq_length=48,
        workdir=f"tiny_{task}",
    )


def minilm_span_run(minilm_dir: pathlib.Path, task: str, seed: int = 0) -> inference.LoadedRun:
    """The real MiniLM encoder with a fresh QA span head (`squad`) or 5-tag tagger (`ner`),
    std 0.2, seeded: the nonlinearity of a real model for completeness checks."""
    from dataclasses import replace

    cfg, params = convert.from_hf(minilm_dir, head="encoder")
    head = {"squad": "question_answering", "ner": "token_classification"}[task]
    outputs = len(NER_TAGS) if task == "ner" else 2
    cfg = cfg.replace(head=head, num_labels=outputs)
    rng = np.random.default_rng(seed)
    params = {k: v for k, v in params.items() if k != "pooler"}  # these heads have none
    params["qa_outputs" if task == "squad" else "classifier"] = {
        "kernel": rng.normal(0.0, 0.2, (cfg.hidden_size, outputs)).astype(np.float32),
        "bias": np.zeros(outputs, np.float32),
    }
    tiny = tiny_span_run(minilm_dir, task)
    return replace(tiny, model_config=cfg, module=models.build(cfg), params=params,
                   max_seq_length=64, workdir=str(minilm_dir))  # fmt: skip


def write_run_dir(workdir: pathlib.Path, run: inference.LoadedRun, task: str) -> pathlib.Path:
    """`run` as a run directory the way training leaves it: best/ params, vocab, run.json."""
    from bertjax import checkpointing
    from bertjax.inference import manifest

    best = checkpointing.BestCheckpointer(workdir, "eval/f1", "max")
    best.maybe_save(1, run.params, {"eval/f1": 1.0})
    best.close()
    entry = manifest.save_tokenizer(workdir, run.tokenizer)
    manifest.write_manifest(workdir, {
        "format_version": 1, "task": task, "model": run.model_config.to_dict(),
        "tokenizer": entry, "max_seq_length": run.max_seq_length, **{
            k: v for k, v in run.manifest.items() if k != "task"},
        **({"label_names": run.label_names} if run.label_names else {}),
    })  # fmt: skip
    return workdir
