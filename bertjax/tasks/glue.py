"""GLUE fine-tuning: the nine tasks as presets of the fine-tuning core (`bertjax.tasks.finetune`).

This module adds only what is GLUE's own: the readers and label sets (`bertjax.data.glue`), the
official metrics per task and the eval-set names; init_from, the model, losses, batching and the
run manifest are the core's, shared with `bertjax.tasks.classify` (the user's own files).

The loss is the cross-entropy (mean squared error for regression) averaged over the real rows
of a batch (`weights` = 0 marks the padding rows of an epoch's last batch). Every dev set is
evaluated whole with the task's official metrics (`bertjax.glue_metrics`), logged as
``eval/<metric>`` (MNLI: ``eval_matched/accuracy``, ``eval_mismatched/accuracy``), and the best
checkpoint by the task's metric is kept in ``WORKDIR/best/``.

The training loop writes
``WORKDIR/run.json`` (`bertjax.inference.manifest`: task, labels, model config, sequence length,
casing) and a copy of the vocabulary, so that `bertjax.predict` rebuilds the model from the
workdir alone.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from absl import logging

from bertjax import glue_metrics, models
from bertjax.data import glue
from bertjax.tasks import finetune
from bertjax.tasks.base import HostInfo, Task, TaskData

# The shared fine-tuning core; re-exported names keep `bertjax.tasks.glue.X` working.
InitFromError = finetune.InitFromError
resolve_tokenizer = finetune.resolve_tokenizer
init_params = finetune.init_params
loss_fn = finetune.loss_fn
eval_step = finetune.eval_step


def glue_task(config: ml_collections.ConfigDict) -> glue.GlueTask:
    return glue.get_task(config.data.task)


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None) -> models.ModelConfig:
    """The classifier's ModelConfig for the configured GLUE task (`finetune.model_config`)."""
    return finetune.model_config(config, vocab_size, glue_task(config).num_labels)


def build_model(config: ml_collections.ConfigDict, data: TaskData | None):
    return finetune.build_model(data, lambda: model_config(config, None))


def batch_spec(config: ml_collections.ConfigDict, model_cfg: Any, batch_size: int):
    return finetune.batch_spec(config, model_cfg, batch_size)


def eval_summary(config, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """The task's official metrics (and the mean loss) over the real rows of a whole dev set."""
    keep = outputs["weight"] > 0
    label, pred = outputs["label"][keep], outputs["pred"][keep]
    result = glue_metrics.compute(glue_task(config).metrics, label, pred)
    result["loss"] = float(np.mean(outputs["loss"][keep]))
    return result


def eval_set_name(split: str) -> str:
    """Logged name of a dev split: validation -> eval, validation_matched -> eval_matched."""
    return split.replace("validation", "eval")


def best_metric_key(task: glue.GlueTask) -> str:
    """The logged key that ranks runs and checkpoints, e.g. eval/pearson, eval_matched/accuracy."""
    return f"{eval_set_name(task.eval_splits[0])}/{task.best_metric}"


def best_metric(config: ml_collections.ConfigDict) -> tuple[str, str]:
    return best_metric_key(glue_task(config)), "max"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_features(
    config: ml_collections.ConfigDict, tokenizer: Any, split: str
) -> dict[str, np.ndarray]:
    """Reads and featurises one split of the configured task."""
    task = glue_task(config)
    examples = glue.load_split(
        task,
        split,
        data_dir=config.data.data_dir,
        tfds_data_dir=config.data.tfds_data_dir or None,
        bad_rows=config.data.bad_rows,
    )
    special = glue.SpecialIds(cls=tokenizer.cls_id, sep=tokenizer.sep_id, pad=tokenizer.pad_id)
    return glue.featurize(
        examples, tokenizer.encode_batch, special, config.data.max_seq_length, task.is_regression
    )


def build_data(config: ml_collections.ConfigDict, host: HostInfo) -> TaskData:
    task = glue_task(config)
    tokenizer = resolve_tokenizer(config)
    cfg = model_config(config, tokenizer.vocab_size)
    train = load_features(config, tokenizer, "train")
    if not train["has_label"].all():
        raise glue.GlueDataError(f"GLUE {task.name} train split has unlabelled rows")
    eval_features = {
        eval_set_name(s): load_features(config, tokenizer, s) for s in task.eval_splits
    }
    logging.info("GLUE %s", task.name)
    labels = None if task.labels is None else list(task.labels)
    return finetune.make_task_data(
        config, host, tokenizer, cfg, train, eval_features, labels,
        manifest=run_manifest_fields(config), extras={"task": task},
    )  # fmt: skip


def run_manifest_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """This task's fields of WORKDIR/run.json (`bertjax.inference.manifest`)."""
    task = glue_task(config)
    return {
        "problem_type": "regression" if task.is_regression else "single_label",
        "label_names": None if task.labels is None else list(task.labels),
        "data": {
            "glue_task": task.name,
            "text_column": task.test.text_a,
            "text_pair_column": task.test.text_b,
            "label_column": task.labelled.label if isinstance(task.labelled.label, str) else None,
        },
        "best_metric": best_metric_key(task),
    }


TASK = Task(
    name="glue",
    build_data=build_data,
    build_model=build_model,
    batch_spec=batch_spec,
    loss_fn=loss_fn,
    eval_step=eval_step,
    eval_summary=eval_summary,
    init_params=init_params,
    best_metric=best_metric,
)
