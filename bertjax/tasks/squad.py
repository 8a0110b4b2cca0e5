"""Extractive question answering (SQuAD v1.1 / v2.0), on the fine-tuning core.

    python -m bertjax.main --config=configs/squad.py --workdir=DIR --config.init_from=CKPT \
      --config.data.train_file=train-v1.1.json --config.data.validation_file=dev-v1.1.json

init_from resolution, encoder grafting and the vocabulary/casing checks are
`bertjax.tasks.finetune`'s; the epoch iterator and padded eval batches `bertjax.data.batching`'s;
windows `bertjax.data.squad`'s; span selection `bertjax.inference.qa`'s; scores
`bertjax.squad_metrics`' (the official scripts' logic). The loss is transformers'
BertForQuestionAnswering loss: the mean of the start and end cross-entropies.

Each evaluation writes ``WORKDIR/predictions_{set}.json`` ({question id: answer text}, the
official scripts' prediction format; v2.0 also ``null_odds_{set}.json``) and logs
``exact_match`` and ``f1`` (v2.0 also the HasAns / NoAns splits and ``best_f1`` with its
``best_f1_thresh``: the null_score_diff_threshold that maximises dev F1).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from bertjax import squad_metrics
from bertjax.data import batching, squad
from bertjax.data.features import MODEL_KEYS
from bertjax.inference import qa as qa_inference
from bertjax.tasks import finetune
from bertjax.tasks.base import HostInfo, Task, TaskData

TRAIN_KEYS = (*MODEL_KEYS, "start_positions", "end_positions")
EVAL_KEYS = (*MODEL_KEYS, "window", "eval_set")


@dataclasses.dataclass
class _EvalSet:
    """What eval_summary needs besides the logits: the questions and their windows."""

    name: str
    examples: list[squad.QAExample]
    feats: dict[str, np.ndarray]
    version: str
    workdir: str
    write: bool  # process 0 writes the predictions file


# eval_summary gets (config, outputs) only: each eval batch carries its set's id.
_EVAL_SETS: dict[int, _EvalSet] = {}
_NEXT_ID = itertools.count(1)


def _read(config: ml_collections.ConfigDict, key: str, limit: int):
    data = config.data
    if data.tfds_name:  # TFDS squad/v1.1 or squad/v2.0 (array_record)
        split = data.train_split if key == "train_file" else data.validation_split
        examples, version = squad.load_tfds(data.tfds_name, split, data.tfds_data_dir or None)
    else:
        examples, version = squad.read_squad_json(data[key])
    if limit > 0:
        examples = examples[:limit]
    if config.data.version_2_with_negative == "auto":
        return examples, version
    return examples, config.data.version_2_with_negative


def _featurize(config, examples, tokenizer, training: bool, name: str):
    feats, stats = squad.featurize(
        examples,
        tokenizer,
        max_seq_length=config.data.max_seq_length,
        doc_stride=config.data.doc_stride,
        max_query_length=config.data.max_query_length,
        training=training,
    )
    logging.info("%s: %s", name, stats.summary())
    if stats.answer_outside_windows:
        logging.warning(
            "%s: %d questions have their answer in no window (trained on [CLS] only): %s%s",
            name,
            stats.answer_outside_windows,
            ", ".join(stats.outside_ids[:10]),
            " ..." if len(stats.outside_ids) > 10 else "",
        )
    return feats, stats


def _model_config(config, vocab_size):
    return finetune.model_config(config, vocab_size, 2).replace(head="question_answering")


def build_data(config: ml_collections.ConfigDict, host: HostInfo) -> TaskData:
    if config.data.tfds_name and (config.data.train_file or config.data.validation_file):
        raise ValueError("set config.data.tfds_name or the train/validation files, not both")
    if not (config.data.train_file or config.data.tfds_name):
        raise ValueError("config.data.train_file is empty: name a SQuAD JSON file")
    tokenizer = finetune.resolve_tokenizer(config)
    cfg = _model_config(config, tokenizer.vocab_size)
    train_examples, version = _read(config, "train_file", config.data.max_train_examples)
    train, train_stats = _featurize(config, train_examples, tokenizer, True, "train")
    eval_sets: dict[str, dict[str, np.ndarray]] = {}
    if config.data.validation_file or (config.data.tfds_name and config.data.validation_split):
        examples, eval_version = _read(config, "validation_file", config.data.max_eval_examples)
        feats, _ = _featurize(config, examples, tokenizer, False, "eval")
        set_id = next(_NEXT_ID)
        feats["window"] = np.arange(len(feats["input_ids"]), dtype=np.int32)
        feats["eval_set"] = np.full(len(feats["input_ids"]), set_id, np.int32)
        _EVAL_SETS[set_id] = _EvalSet(
            "eval", examples, feats, eval_version, host.workdir, host.process_index == 0
        )
        eval_sets["eval"] = feats
        version = eval_version
    eval_batch = int(config.get("eval_batch_size", 0) or host.global_batch_size)
    iterator = batching.TrainIterator(
        train, host.global_batch_size, host.seed, host.process_index, host.process_count,
        keys=TRAIN_KEYS,
    )  # fmt: skip
    logging.info("SQuAD v%s; %d steps per epoch", version, iterator.steps_per_epoch)

    def make_eval_sets():
        return {
            name: batching.eval_batches(
                feats, eval_batch, host.process_index, host.process_count, keys=EVAL_KEYS
            )
            for name, feats in eval_sets.items()
        }

    data = config.data
    manifest = {
        "data": {
            "doc_stride": int(data.doc_stride),
            "max_query_length": int(data.max_query_length),
            "n_best_size": int(data.n_best_size),
            "max_answer_length": int(data.max_answer_length),
            "version_2": version == "2.0",
            "null_score_diff_threshold": float(data.null_score_diff_threshold),
        },
        "best_metric": "eval/f1" if eval_sets else None,
    }
    return TaskData(
        train=iterator,
        eval_sets=make_eval_sets,
        vocab_size=tokenizer.vocab_size,
        steps_per_epoch=iterator.steps_per_epoch,
        extras={"tokenizer": tokenizer, "model_config": cfg, "train_stats": train_stats},
        manifest=manifest,
    )


def build_model(config: ml_collections.ConfigDict, data: TaskData | None):
    return finetune.build_model(data, lambda: _model_config(config, None))


def batch_spec(config: ml_collections.ConfigDict, model_cfg: Any, batch_size: int):
    length = config.data.max_seq_length
    spec = {k: jax.ShapeDtypeStruct((batch_size, length), jnp.int32) for k in MODEL_KEYS}
    spec["start_positions"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    spec["end_positions"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    spec["weights"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
    return spec


def loss_fn(config, model, params, batch, rng, train):
    rngs = {"dropout": rng} if train else None
    inputs = {k: batch[k] for k in MODEL_KEYS}
    out = model.apply({"params": params}, inputs, train=train, rngs=rngs)
    ce = optax.softmax_cross_entropy_with_integer_labels
    start = ce(out["start_logits"], batch["start_positions"])
    end = ce(out["end_logits"], batch["end_positions"])
    weights = batch["weights"]
    denom = jnp.maximum(weights.sum(), 1.0)
    loss = ((start + end) / 2 * weights).sum() / denom
    return loss, {"loss": loss}


def eval_step(config, model, params, batch):
    inputs = {k: batch[k] for k in MODEL_KEYS}
    out = model.apply({"params": params}, inputs, train=False)
    return {
        "start_logits": out["start_logits"],
        "end_logits": out["end_logits"],
        "window": batch["window"],
        "eval_set": batch["eval_set"],
        "weight": batch["weights"],
    }


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def eval_summary(config, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    keep = outputs["weight"] > 0
    set_id = int(outputs["eval_set"][keep][0])
    ev = _EVAL_SETS[set_id]
    n = len(ev.feats["input_ids"])
    start = np.zeros((n, outputs["start_logits"].shape[1]), np.float32)
    end = np.zeros_like(start)
    windows = outputs["window"][keep]
    start[windows] = outputs["start_logits"][keep]
    end[windows] = outputs["end_logits"][keep]
    if len(np.unique(windows)) != n:
        raise ValueError(f"eval set {ev.name}: {len(np.unique(windows))} of {n} windows came back")
    version_2 = ev.version == "2.0"
    answers = qa_inference.postprocess(
        ev.examples,
        ev.feats,
        start,
        end,
        n_best_size=config.data.n_best_size,
        max_answer_length=config.data.max_answer_length,
        version_2=version_2,
        null_score_diff_threshold=config.data.null_score_diff_threshold,
    )
    predictions = {ex.qid: a["text"] for ex, a in zip(ev.examples, answers, strict=True)}
    gold = {ex.qid: [t for t, _ in ex.answers] for ex in ev.examples}
    if ev.write and ev.workdir:
        _write_json(os.path.join(ev.workdir, f"predictions_{ev.name}.json"), predictions)
    if not version_2:
        return squad_metrics.evaluate_v1(gold, predictions)
    null_odds = {ex.qid: a["null_score_diff"] for ex, a in zip(ev.examples, answers, strict=True)}
    if ev.write and ev.workdir:
        _write_json(os.path.join(ev.workdir, f"null_odds_{ev.name}.json"), null_odds)
    scores = squad_metrics.evaluate_v2(gold, predictions, null_odds)
    out = {"exact_match": scores["exact"], "f1": scores["f1"]}
    for key in ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact",
                "best_f1", "best_f1_thresh"):  # fmt: skip
        if key in scores:
            out[key] = float(scores[key])
    return out


def best_metric(config: ml_collections.ConfigDict) -> tuple[str, str] | None:
    """eval/f1 (the official F1), or config.best_metric; None without a validation set."""
    has_eval = config.data.validation_file or (
        config.data.tfds_name and config.data.validation_split
    )
    return finetune.configured_best_metric(config, "eval/f1", has_eval=bool(has_eval))


TASK = Task(
    name="squad",
    build_data=build_data,
    build_model=build_model,
    batch_spec=batch_spec,
    loss_fn=loss_fn,
    eval_step=eval_step,
    eval_summary=eval_summary,
    init_params=finetune.init_params,
    best_metric=best_metric,
)
