"""Fine-tune on your own files: classification, multi-label and regression from CSV/TSV/JSONL.

    python -m bertjax.main --config=configs/classify.py --workdir=DIR --config.init_from=CKPT \
      --config.data.train_file=train.csv --config.data.validation_file=dev.csv \
      --config.data.text_column=review --config.data.label_column=sentiment

The files are read by `bertjax.data.records`; the label set comes from the training file and is
stored with the run (run.json's label_names, in logit order). `config.data.problem_type`:
single_label (softmax cross-entropy; accuracy, macro-F1, MCC), multi_label (sigmoid BCE; micro-
and macro-F1, exact match), regression (squared error; Pearson, Spearman), or auto (single_label
or regression, read off the training labels and logged). Everything else (init_from, grafting,
batching, losses, the manifest) is the fine-tuning core's (`bertjax.tasks.finetune`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from bertjax import glue_metrics
from bertjax.data import features, records
from bertjax.tasks import finetune
from bertjax.tasks.base import HostInfo, Task, TaskData

# The metrics logged per problem type and the default best_metric.
METRICS = {
    "single_label": ("accuracy", "macro_f1", "mcc"),
    "multi_label": ("micro_f1", "macro_f1", "exact_match"),
    "regression": ("pearson", "spearman"),
}
DEFAULT_BEST = {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "pearson"}
SPLITS = {"train": "train_file", "eval": "validation_file", "test": "test_file"}


def _columns(config: ml_collections.ConfigDict) -> records.Columns:
    data = config.data
    if not data.text_column:
        raise ValueError("config.data.text_column is empty: name the column that holds the text")
    if not data.label_column:
        raise ValueError("config.data.label_column is empty: name the column of the labels")
    return records.Columns(data.text_column, data.text_pair_column, data.label_column)


@functools.lru_cache(maxsize=8)
def _read(path: str, fmt: str, bad_rows: str, mtime: float) -> records.Table:
    del mtime  # part of the cache key only: a changed file is read again
    return records.read_table(path, fmt, bad_rows)


def read_table(config: ml_collections.ConfigDict, key: str) -> records.Table:
    path = config.data[key]
    if not path:
        raise ValueError(f"config.data.{key} is empty")
    mtime = os.path.getmtime(path) if os.path.exists(path) else 0.0
    return _read(path, config.data.format, config.data.bad_rows, mtime)


def labels_of(config: ml_collections.ConfigDict, log: bool = True) -> tuple[str, list[str] | None]:
    """(problem type, label names) from the training file; "auto" resolved (and logged, unless
    `log` is False: a second look at the same file)."""
    table = read_table(config, "train_file")
    problem, names = records.training_labels(
        table, _columns(config), config.data.problem_type, config.data.label_separator
    )
    if log and config.data.problem_type == "auto":
        logging.info("problem_type auto -> %s (from the labels of %s)", problem, table.path)
    return problem, names


def _num_labels(problem: str, names: list[str] | None) -> int:
    return 1 if problem == "regression" else len(names or [])


def _examples(config, key: str, problem: str, names, require_labels: bool):
    table = read_table(config, key)
    examples, stats = records.to_examples(
        table,
        _columns(config),
        problem,
        names,
        label_separator=config.data.label_separator,
        bad_rows=config.data.bad_rows,
        require_labels=require_labels,
    )
    logging.info("%s split: %s", key.removesuffix("_file"), stats.summary())
    if stats.skipped:
        logging.warning("%s: skipped rows by reason: %s", table.path, dict(stats.skipped))
    return examples


def build_data(config: ml_collections.ConfigDict, host: HostInfo) -> TaskData:
    problem, names = labels_of(config)
    tokenizer = finetune.resolve_tokenizer(config)
    cfg = finetune.model_config(config, tokenizer.vocab_size, _num_labels(problem, names))
    special = features.SpecialIds(cls=tokenizer.cls_id, sep=tokenizer.sep_id, pad=tokenizer.pad_id)

    def featurize(examples):
        return features.featurize(
            examples, tokenizer.encode_batch, special, config.data.max_seq_length,
            regression=problem == "regression",
        )  # fmt: skip

    train = featurize(_examples(config, "train_file", problem, names, True))
    evals = {}
    if config.data.validation_file:
        evals["eval"] = featurize(_examples(config, "validation_file", problem, names, True))
    if config.data.test_file:
        test = featurize(_examples(config, "test_file", problem, names, False))
        if test["has_label"].all():  # a labelled test file is evaluated too
            evals["test"] = test
        else:
            logging.info("test split: unlabelled; score it with bertjax.predict")
    manifest = {
        "problem_type": problem,
        "label_names": names,
        "data": {
            "text_column": config.data.text_column,
            "text_pair_column": config.data.text_pair_column or None,
            "label_column": config.data.label_column,
            "glue_task": None,
        },
        "best_metric": (_best(config, problem) or (None,))[0],
    }
    return finetune.make_task_data(
        config, host, tokenizer, cfg, train, evals, names, manifest,
        extras={"problem_type": problem},
    )  # fmt: skip


def _dry_run_config(config: ml_collections.ConfigDict):
    problem = config.data.problem_type
    num = 1 if problem == "regression" else int(config.data.get("num_labels", 0) or 2)
    return finetune.model_config(config, None, num)


def build_model(config: ml_collections.ConfigDict, data: TaskData | None):
    return finetune.build_model(data, lambda: _dry_run_config(config))


def batch_spec(config: ml_collections.ConfigDict, model_cfg: Any, batch_size: int):
    multi = config.data.problem_type == "multi_label"
    return finetune.batch_spec(config, model_cfg, batch_size, multi_label=multi)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def summarize(problem: str, label: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The metrics of `problem` over real rows (labels / predictions as eval_step gives them)."""
    if problem == "regression":
        return glue_metrics.compute(("pearson", "spearman"), label, pred)
    if problem == "multi_label":
        label, pred = label > 0.5, pred > 0.5
        tp = (label & pred).sum(0).astype(np.float64)
        fp = (~label & pred).sum(0).astype(np.float64)
        fn = (label & ~pred).sum(0).astype(np.float64)
        return {
            "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(_f1(tp, fp, fn).mean()),
            "exact_match": float((label == pred).all(-1).mean()),
        }
    num = int(max(label.max(initial=0), pred.max(initial=0))) + 1
    tp = np.array([np.sum((label == c) & (pred == c)) for c in range(num)], np.float64)
    fp = np.array([np.sum((label != c) & (pred == c)) for c in range(num)], np.float64)
    fn = np.array([np.sum((label == c) & (pred != c)) for c in range(num)], np.float64)
    present = (tp + fn) > 0  # macro-F1 over the classes the set holds (as scikit-learn's labels)
    present |= (tp + fp) > 0
    return {
        "accuracy": float(np.mean(label == pred)),
        "macro_f1": float(_f1(tp, fp, fn)[present].mean()),
        "mcc": _mcc(label, pred, num),
    }


def _mcc(label: np.ndarray, pred: np.ndarray, num: int) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004; scikit-learn's)."""
    conf = np.zeros((num, num), np.float64)
    np.add.at(conf, (label.astype(np.int64), pred.astype(np.int64)), 1.0)
    t, p = conf.sum(1), conf.sum(0)
    c, s = np.trace(conf), conf.sum()
    denom = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (t * p).sum()) / denom) if denom > 0 else 0.0


def eval_summary(config, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    keep = outputs["weight"] > 0
    label, pred = outputs["label"][keep], outputs["pred"][keep]
    if label.ndim == 2:
        problem = "multi_label"
    elif np.issubdtype(label.dtype, np.floating):
        problem = "regression"
    else:
        problem = "single_label"
    result = summarize(problem, label, pred)
    result["loss"] = float(np.mean(outputs["loss"][keep]))
    return result


def best_metric(config: ml_collections.ConfigDict) -> tuple[str, str] | None:
    """config.best_metric (a logged key, e.g. eval/macro_f1; "eval/loss" is minimised), else
    the problem type's default on the validation set; None without a validation file."""
    if not config.data.validation_file:
        return None
    # build_data has logged how "auto" resolved; this only needs the problem type again.
    problem = "" if config.get("best_metric", "") else labels_of(config, log=False)[0]
    return _best(config, problem)


def _best(config: ml_collections.ConfigDict, problem: str) -> tuple[str, str] | None:
    if not config.data.validation_file:
        return None
    key = config.get("best_metric", "") or f"eval/{DEFAULT_BEST[problem]}"
    metric = key.split("/", 1)[-1]
    known = {m for ms in METRICS.values() for m in ms} | {"loss"}
    if "/" not in key or metric not in known:
        raise ValueError(
            f"config.best_metric={key!r}: expected eval/<metric> or test/<metric> with a "
            f"metric among {sorted(known)}"
        )
    return key, "min" if metric == "loss" else "max"


TASK = Task(
    name="classify",
    build_data=build_data,
    build_model=build_model,
    batch_spec=batch_spec,
    loss_fn=finetune.loss_fn,
    eval_step=finetune.eval_step,
    eval_summary=eval_summary,
    init_params=finetune.init_params,
    best_metric=best_metric,
)
