"""The task plug-in interface: what an objective gives the one training loop (`bertjax/train.py`).

A task is a plain `Task` record of functions, registered by name in `bertjax/tasks/__init__.py`
and chosen with `config.task`. There is no class hierarchy: a new objective is one file that
builds a `Task` and registers it. The loop owns everything else (mesh, sharding, optimizer,
gradient accumulation, checkpoints, logging, resumption); a task never touches those.

What the loop does with a task, in order:

1. ``data = task.build_data(config, host)`` once per host (`host`: a `HostInfo`), unless
   ``--dry_run`` (which compiles without data).
2. ``model_cfg, model = task.build_model(config, data)``; ``data`` is None in a dry run, so the
   task must then take the vocabulary size etc. from the config.
3. ``task.batch_spec(config, model_cfg, global_batch_size)`` gives the shapes/dtypes of a global
   batch: used to initialise parameters (``model.init`` under `jax.eval_shape`) and to compile.
4. Fresh start only (not on resume): ``params = task.init_params(config, model_cfg, params)``
   when set, e.g. to replace the encoder with a pretrained one. `params` are the freshly
   initialised (sharded) params; return a tree of the same structure and shapes (numpy or jax
   arrays); the loop puts it back into the params' shardings and checks it. To read the params
   of a bertjax workdir or checkpoint use `bertjax.checkpointing.restore_params(path)`.
5. Every step, inside the jitted and sharded train step (per microbatch when accumulating):
   ``loss, metrics = task.loss_fn(config, model, params, batch, rng, True)``; `loss` is the
   scalar that is differentiated, `metrics` a dict of float32 scalars that are averaged over
   microbatches and logged as they are (`metrics.jsonl` key = dict key).
6. Every ``eval_every`` steps (and at the end), for each ``name, batches in data.eval_sets()``:
   ``out = task.eval_step(config, model, params, batch)`` runs jitted on every batch; ``out``
   is a dict of arrays with a leading batch axis (per-example predictions, labels, weights,
   loss sums...). The loop gathers them from all hosts into one numpy array per key for the
   *whole* eval set and calls ``task.eval_summary(config, outputs) -> dict[str, float]`` on the
   host, so whole-set metrics (Pearson, Spearman, MCC, F1) are exact. Results are logged as
   ``f"{name}/{metric}"`` (e.g. ``eval/mlm_accuracy``, ``eval_matched/accuracy``).
7. If ``task.best_metric(config)`` returns ``("eval/pearson", "max")``, the params of the best
   eval so far are also kept in ``WORKDIR/best/`` (see `bertjax.checkpointing`).

Steps versus epochs: when ``config.num_train_epochs > 0`` and the task's data gives
``steps_per_epoch``, the loop uses ``total_steps = num_train_epochs * steps_per_epoch``, a warmup
of ``optim.warmup_proportion * total_steps`` (when that key is set) and evaluates at the end of
every epoch (when ``config.eval_every == 0``; -1 never evaluates).

Example (a minimal classification task; see `bert_pretrain.py` for a complete one)::

    def loss_fn(config, model, params, batch, rng, train):
        rngs = {"dropout": rng} if train else None
        logits = model.apply({"params": params}, batch, train=train, rngs=rngs)["logits"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        acc = (logits.argmax(-1) == batch["labels"]).mean()
        return loss, {"loss": loss, "accuracy": acc}

    def eval_step(config, model, params, batch):
        logits = model.apply({"params": params}, batch)["logits"]
        return {"pred": logits.argmax(-1), "label": batch["labels"], "w": batch["weights"]}

    def eval_summary(config, out):
        keep = out["w"] > 0  # padding rows of the last batch carry weight 0
        return {"accuracy": float((out["pred"][keep] == out["label"][keep]).mean())}

    TASK = Task(name="my_task", build_data=..., build_model=..., batch_spec=...,
                loss_fn=loss_fn, eval_step=eval_step, eval_summary=eval_summary,
                best_metric=lambda config: ("eval/accuracy", "max"))
    # in bertjax/tasks/__init__.py:  register(TASK)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

Batch = Mapping[str, Any]  # str -> np.ndarray (host) or jax.Array (device); batch axis first
Params = Any  # a pytree of arrays (the "params" collection of a flax module)


class TrainIterator(Protocol):
    """Per-host numpy batches, endless, with a serialisable position (grain's protocol)."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """What a task needs to build this host's share of the data."""

    seed: int
    process_index: int
    process_count: int
    local_batch_size: int  # rows of the global batch this host feeds
    global_batch_size: int
    workdir: str  # run directory (e.g. for a vocabulary trained at start-up)
    batch_shards: int = 1  # devices this host splits a batch's rows over (data x fsdp)


@dataclasses.dataclass
class TaskData:
    """A task's data on one host.

    train: endless iterator of this host's rows of each global batch, with get_state/set_state.
    eval_sets: returns fresh, finite iterables of this host's eval batches by eval-set name
      (e.g. {"eval": ...} or {"eval_matched": ..., "eval_mismatched": ...}). Every host must yield
      the same number of batches, each with `local_batch_size` rows (pad the last one and mark the
      padding, e.g. with a zero weight, so that `eval_summary` can drop it).
    vocab_size: size of the tokenizer's vocabulary (None when the task has none).
    steps_per_epoch: optimizer steps per pass over the training set, for epoch-based recipes.
    extras: anything else the task's own functions want; ``extras["tokenizer"]`` is the run's
      tokenizer, which the loop saves with the run (`bertjax.inference.manifest.write_run`).
    manifest: the task's own fields of ``WORKDIR/run.json`` (problem_type, label_names, data,
      best_metric); the loop adds task, model, tokenizer, max_seq_length and init_from.
    """

    train: TrainIterator
    eval_sets: Callable[[], Mapping[str, Iterable[dict[str, np.ndarray]]]]
    vocab_size: int | None = None
    steps_per_epoch: int | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)


Config = ml_collections.ConfigDict
LossFn = Callable[
    [Config, Any, Params, Batch, jax.Array, bool], tuple[jax.Array, dict[str, jax.Array]]
]
EvalStepFn = Callable[[Config, Any, Params, Batch], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Task:
    """One training objective; every field is a plain function (see the module docstring).

    build_data(config, host) -> TaskData
    build_model(config, data | None) -> (ModelConfig, flax module)
    batch_spec(config, model_cfg, batch_size) -> {key: jax.ShapeDtypeStruct} of a global batch
    loss_fn(config, model, params, batch, rng, train) -> (loss, {name: scalar})   [jitted]
    eval_step(config, model, params, batch) -> {name: array, leading batch axis}  [jitted]
    eval_summary(config, {name: np.ndarray over the whole eval set}) -> {name: float} [host]
    init_params(config, model_cfg, params) -> params   (fresh start only; optional)
    best_metric(config) -> (logged key, "max" | "min") or None   (optional)
    """

    name: str
    build_data: Callable[[ml_collections.ConfigDict, HostInfo], TaskData]
    build_model: Callable[[ml_collections.ConfigDict, TaskData | None], tuple[Any, Any]]
    batch_spec: Callable[[ml_collections.ConfigDict, Any, int], dict[str, jax.ShapeDtypeStruct]]
    loss_fn: LossFn
    eval_step: EvalStepFn
    eval_summary: Callable[[Config, dict[str, np.ndarray]], dict[str, float]]
    init_params: Callable[[ml_collections.ConfigDict, Any, Params], Params] | None = None
    best_metric: Callable[[ml_collections.ConfigDict], tuple[str, str] | None] | None = None
