"""Token classification (CoNLL-2003 NER and other token/tag files), on the fine-tuning core.

    python -m bertjax.main --config=configs/ner.py --workdir=DIR --config.init_from=CKPT \
      --config.data.train_file=train.txt --config.data.validation_file=dev.txt \
      --config.data.test_file=test.txt

init_from, grafting and the vocabulary/casing checks are `bertjax.tasks.finetune`'s; batching
`bertjax.data.batching`'s; files and first-piece features `bertjax.data.conll`'s; scores
`bertjax.ner_metrics`' (seqeval's default mode). The tag set is read from the training file
(IOB2) and stored with the run (run.json's label_names). The loss is transformers'
BertForTokenClassification loss: cross-entropy averaged over the labelled pieces of the batch.

Each evaluation logs precision / recall / f1 (entity level, micro) and ``f1_TYPE`` per entity
type, and writes ``WORKDIR/predictions_{set}.conll`` (token, gold tag, predicted tag per line,
conlleval's input format).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from bertjax import ner_metrics
from bertjax.data import batching, conll
from bertjax.data.features import MODEL_KEYS
from bertjax.tasks import finetune
from bertjax.tasks.base import HostInfo, Task, TaskData

TRAIN_KEYS = (*MODEL_KEYS, "labels")
EVAL_KEYS = (*MODEL_KEYS, "labels", "window", "eval_set")
SPLITS = {"eval": "validation_file", "test": "test_file"}


@dataclasses.dataclass
class _EvalSet:
    name: str
    sentences: list[conll.Sentence]
    feats: dict[str, np.ndarray]
    label_names: list[str]
    workdir: str
    write: bool


_EVAL_SETS: dict[int, _EvalSet] = {}  # eval batches carry their set's id (see eval_summary)
_NEXT_ID = itertools.count(1)


def _read(config: ml_collections.ConfigDict, key: str, limit: int = 0) -> list[conll.Sentence]:
    sentences = conll.read_conll(config.data[key], config.data.tag_scheme)
    return sentences[:limit] if limit > 0 else sentences


def _model_config(config, vocab_size, num_tags):
    cfg = finetune.model_config(config, vocab_size, num_tags)
    return cfg.replace(head="token_classification")


def build_data(config: ml_collections.ConfigDict, host: HostInfo) -> TaskData:
    if not config.data.train_file:
        raise ValueError("config.data.train_file is empty: name a CoNLL / token-tag file")
    train_sentences = _read(config, "train_file", config.data.max_train_sentences)
    names = conll.tag_names(train_sentences)
    label_to_id = {n: i for i, n in enumerate(names)}
    tokenizer = finetune.resolve_tokenizer(config)
    cfg = _model_config(config, tokenizer.vocab_size, len(names))
    length = config.data.max_seq_length
    train, _ = conll.featurize(train_sentences, tokenizer, label_to_id, length)
    logging.info(
        "train: %d sentences -> %d rows; tags %s", len(train_sentences), len(train["labels"]), names
    )
    eval_sets: dict[str, dict[str, np.ndarray]] = {}
    for name, key in SPLITS.items():
        if not config.data[key]:
            continue
        sentences = _read(config, key, config.data.max_eval_sentences)
        feats, unknown = conll.featurize(sentences, tokenizer, label_to_id, length)
        if unknown:
            logging.warning(
                "%s: %d words carry tags not in the training data (scored, never predicted)",
                config.data[key], unknown,
            )  # fmt: skip
        set_id = next(_NEXT_ID)
        feats["window"] = np.arange(len(feats["input_ids"]), dtype=np.int32)
        feats["eval_set"] = np.full(len(feats["input_ids"]), set_id, np.int32)
        _EVAL_SETS[set_id] = _EvalSet(
            name, sentences, feats, names, host.workdir, host.process_index == 0
        )
        eval_sets[name] = feats
        logging.info("%s: %d sentences -> %d rows", name, len(sentences), len(feats["labels"]))
    iterator = batching.TrainIterator(
        train, host.global_batch_size, host.seed, host.process_index, host.process_count,
        keys=TRAIN_KEYS, packer=finetune.packer(config, host, train),
    )  # fmt: skip
    eval_batch = int(config.get("eval_batch_size", 0) or host.global_batch_size)
    eval_packers = {name: finetune.packer(config, host, f) for name, f in eval_sets.items()}

    def make_eval_sets():
        return {
            name: batching.eval_batches(
                feats,
                eval_batch,
                host.process_index,
                host.process_count,
                keys=EVAL_KEYS,
                packer=eval_packers[name],
            )  # fmt: skip
            for name, feats in eval_sets.items()
        }

    manifest = {
        "label_names": names,
        "data": {"tag_scheme": "iob2"},
        "best_metric": "eval/f1" if "eval" in eval_sets else None,
    }
    return TaskData(
        train=iterator,
        eval_sets=make_eval_sets,
        vocab_size=tokenizer.vocab_size,
        steps_per_epoch=iterator.steps_per_epoch,
        extras={"tokenizer": tokenizer, "model_config": cfg},
        manifest=manifest,
    )


def build_model(config: ml_collections.ConfigDict, data: TaskData | None):
    return finetune.build_model(
        data, lambda: _model_config(config, None, int(config.data.get("num_labels", 0) or 9))
    )


def batch_spec(config: ml_collections.ConfigDict, model_cfg: Any, batch_size: int):
    """Global batch shapes: the model inputs (packed: plus segment_ids, positions [R, L] and
    cls_index [B], with R = B the most rows a batch can need), labels [B, L], weights [B]."""
    spec = finetune.input_spec(config, batch_size)
    spec["labels"] = jax.ShapeDtypeStruct((batch_size, config.data.max_seq_length), jnp.int32)
    return spec


def _logits(model, params, batch, train: bool, rngs=None) -> jax.Array:
    """[B, L, tags]: each example's token logits, its labels' layout (packed or padded)."""
    inputs = finetune.model_inputs(batch)
    logits = model.apply({"params": params}, inputs, train=train, rngs=rngs)["logits"]
    return finetune.per_example_tokens(logits, batch)


def loss_fn(config, model, params, batch, rng, train):
    rngs = {"dropout": rng} if train else None
    logits = _logits(model, params, batch, train, rngs)
    labels = batch["labels"]
    mask = (labels >= 0).astype(jnp.float32) * batch["weights"][:, None]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    denom = jnp.maximum(mask.sum(), 1.0)
    loss = (ce * mask).sum() / denom
    hits = (logits.argmax(-1) == labels).astype(jnp.float32)
    return loss, {"loss": loss, "token_accuracy": (hits * mask).sum() / denom}


def eval_step(config, model, params, batch):
    logits = _logits(model, params, batch, train=False)
    return {
        "pred": logits.argmax(-1).astype(jnp.int32),
        "window": batch["window"],
        "eval_set": batch["eval_set"],
        "weight": batch["weights"],
    }


def _write_conll(path: str, sentences, predicted) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for s, tags in zip(sentences, predicted, strict=True):
            for token, gold, pred in zip(s.tokens, s.tags, tags, strict=True):
                f.write(f"{token} {gold} {pred}\n")
            f.write("\n")
    os.replace(tmp, path)


def eval_summary(config, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    keep = outputs["weight"] > 0
    ev = _EVAL_SETS[int(outputs["eval_set"][keep][0])]
    n, t = ev.feats["input_ids"].shape
    pred = np.zeros((n, t), np.int32)
    pred[outputs["window"][keep]] = outputs["pred"][keep]
    per_word = conll.words_from_rows(ev.feats, pred, [len(s.tokens) for s in ev.sentences])
    predicted = [[ev.label_names[i] for i in row] for row in per_word]
    if ev.write and ev.workdir:
        _write_conll(
            os.path.join(ev.workdir, f"predictions_{ev.name}.conll"), ev.sentences, predicted
        )
    scores = ner_metrics.evaluate([list(s.tags) for s in ev.sentences], predicted)
    out = {k: scores["overall"][k] for k in ("precision", "recall", "f1")}
    for kind, row in scores.items():
        if kind != "overall":
            out[f"f1_{kind}"] = row["f1"]
    return out


def best_metric(config: ml_collections.ConfigDict) -> tuple[str, str] | None:
    """eval/f1 (entity F1 on the validation file), or config.best_metric."""
    return finetune.configured_best_metric(
        config, "eval/f1", has_eval=bool(config.data.validation_file)
    )


TASK = Task(
    name="ner",
    build_data=build_data,
    build_model=build_model,
    batch_spec=batch_spec,
    loss_fn=loss_fn,
    eval_step=eval_step,
    eval_summary=eval_summary,
    init_params=finetune.init_params,
    best_metric=best_metric,
)
