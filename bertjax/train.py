"""The training loop: `run(config, workdir)`, one function for every task.

Read top to bottom:

1. `build_trainer` - the state created abstractly (`jax.eval_shape`), its shardings derived
   from the model's logical axis names, the train step (gradient accumulation as a scan over
   microbatches, so that one logged step is one optimizer step) jitted with explicit in/out
   shardings and the state donated. Benchmarks time this very step.
2. `run` - mesh, task, this host's data and model; the trainer; the state initialised straight
   into its shardings (or restored); then the loop: global batch from each host's rows, step,
   and every so often fetch metrics (stopping on a non-finite loss), log, evaluate,
   checkpoint. SIGTERM saves and returns.

The state is a plain dict ``{"step", "params", "opt_state", "rng"}``; the RNG of step ``s`` is
``fold_in(rng, s)``, so a restored run draws the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import signal
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from bertjax import (
    checkpointing,
    config_lib,
    inputs,
    metrics,
    optim,
    profiling,
    sharding,
    tasks,
)
from bertjax import workdir as workdir_lib
from bertjax.inference import manifest as run_manifest


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient / parameter norm) became NaN or infinite; the run stopped."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    total_steps: int
    warmup_steps: int
    eval_every: int  # > 0: every so many steps and at the end; 0: at the end; -1: never


@dataclasses.dataclass
class RunResult:
    """What `run` returns: the last step, the final state, the records written (process 0)."""

    step: int
    state: Any
    records: list[dict[str, Any]]
    dry_run: dict[str, Any] | None = None


def resolve_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int | None, *, dry_run: bool = False
) -> Schedule:
    """Step counts from the config: fixed steps, or epochs when `num_train_epochs` > 0.

    With both, a positive `total_steps` bounds the epochs (``--config.total_steps=100`` on an
    epoch-based config trains 100 steps, as the user meant). ``config.eval_every``: > 0
    evaluates every so many steps and at the end, 0 only at the end (at the end of every epoch
    with `num_train_epochs`), -1 never. `dry_run`: no data, so an epoch count without
    `total_steps` compiles with a placeholder length (the step's program does not depend on it).
    """
    epochs = float(config.get("num_train_epochs", 0) or 0)
    total, warmup, eval_every = config.total_steps, config.optim.warmup_steps, config.eval_every
    if epochs > 0 and dry_run and not steps_per_epoch:
        total = total if total > 0 else 1
    elif epochs > 0:
        if not steps_per_epoch:
            raise ValueError(
                f"config.num_train_epochs={epochs} needs the task's data to give steps_per_epoch"
            )
        by_epochs = max(1, math.ceil(epochs * steps_per_epoch))
        if 0 < total < by_epochs:
            logging.warning(
                "config.total_steps=%d bounds the run (num_train_epochs=%s would be %d steps)",
                total,
                epochs,
                by_epochs,
            )
        else:
            total = by_epochs
        if eval_every == 0:
            eval_every = steps_per_epoch
    if config.optim.get("warmup_proportion", 0):
        warmup = int(round(float(config.optim.warmup_proportion) * total))
    return Schedule(int(total), int(min(warmup, total)), int(max(eval_every, -1)))


class _Preemption:
    """Notices SIGTERM (how TPU VMs and SLURM announce preemption) without stopping the step.

    Multi-process: JAX's preemption service (started by `jax.distributed.initialize`) catches
    the signal and agrees with every host on one step at which all of them save. Single
    process: a Python signal handler sets a flag.
    """

    def __init__(self) -> None:
        self._flag = False
        self._previous = None
        self._use_service = jax.process_count() > 1

    def __enter__(self) -> _Preemption:
        if not self._use_service:
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_signal(self, signum: int, frame: object) -> None:
        logging.warning("SIGTERM received: saving a checkpoint, then exiting")
        self._flag = True

    def reached(self, step: int) -> bool:
        if self._use_service:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag


def _split_microbatches(x: jax.Array, num: int) -> jax.Array:
    """[B, ...] -> [num, B / num, ...]; microbatch i takes rows i, i + num, ...

    Taking every num-th row (not contiguous blocks) keeps each microbatch spread over all
    the devices that hold the batch, so no data moves between devices.
    """
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
    spec = PartitionSpec(None, sharding.BATCH_AXES, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, spec)


def _check_finite(step: int, values: dict[str, float], ckpt: checkpointing.Checkpointer) -> None:
    bad = {k: values[k] for k in ("loss", "grad_norm", "param_norm") if k in values}
    if all(math.isfinite(v) for v in bad.values()):
        return
    ckpt.wait()  # let the saves of good states in flight finish
    raise NonFiniteLossError(
        f"non-finite value at step {step}: {bad}. Stopped without saving; the last good "
        f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Try a lower "
        "config.optim.learning_rate, gradient clipping (config.optim.grad_clip_norm), "
        "float32 compute (config.model.dtype), or config.skip_nonfinite_steps=N to skip up "
        "to N such steps."
    )


@dataclasses.dataclass
class Trainer:
    """The sharded state and the jitted train / eval steps of one (config, task, model, mesh).

    `run` trains with it; benchmarks/train_speed.py times its `step`. Every array of the state
    has a sharding derived from the model's logical axis names (`state_shardings`); `step`
    donates the state it is given.
    """

    config: ml_collections.ConfigDict
    task: tasks.Task
    model: nn.Module
    mesh: jax.sharding.Mesh
    rules: Any
    abstract_state: Any  # ShapeDtypeStructs carrying their shardings
    state_shardings: Any
    param_shardings: Any
    batch_sharding: jax.sharding.NamedSharding
    batch_spec: dict[str, jax.ShapeDtypeStruct]
    num_params: int
    _init_state: Any
    _jit_train_step: Any
    # Compiled train steps by batch signature ((key, shape, dtype), ...): the spec's, and one
    # per other shape a run meets (packed fine-tuning batches vary in rows).
    _compiled: dict[tuple, Any] = dataclasses.field(default_factory=dict)
    compile_seconds: float = 0.0  # spent compiling train steps so far

    @contextlib.contextmanager
    def context(self):
        """The mesh and logical axis rules that tracing the model needs."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    @property
    def step(self) -> Any:
        """The compiled train step, `(state, batch) -> (state, metrics)`; compiled once."""
        return self.step_for(self.batch_spec)

    @property
    def compiled_shapes(self) -> int:
        """How many batch shapes the train step has been compiled for so far."""
        return len(self._compiled)

    def step_for(self, batch: dict[str, Any]) -> Any:
        """The compiled train step for `batch`'s shapes (arrays or ShapeDtypeStructs), compiled
        and logged the first time they are met: packed fine-tuning batches vary in rows
        (`bertjax.data.example_packing`), a few shapes per run."""
        signature = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))
        if signature not in self._compiled:
            started = time.time()
            abstract = {
                k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
                for k, v in batch.items()
            }
            with self.context():
                lowered = self._jit_train_step.lower(self.abstract_state, abstract)
                self._compiled[signature] = lowered.compile()
            seconds = time.time() - started
            self.compile_seconds += seconds
            rows = abstract["input_ids"].shape[0] if "input_ids" in abstract else None
            logging.info("train step compiled in %.1fs (batch rows: %s)", seconds, rows)
        return self._compiled[signature]

    def init_state(self, rng: jax.Array) -> dict[str, Any]:
        """A fresh state, each array created directly in its sharding."""
        # Initialisation is traced without a mesh in context, so that no logical constraint
        # inside the model applies to it; the out_shardings put every array where it belongs.
        with jax.set_mesh(None), nn.logical_axis_rules(self.rules):
            return jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)

    def eval_step(self) -> Any:
        """The jitted eval step, `(params, batch) -> per-row outputs` (the task's)."""
        config, task, model = self.config, self.task, self.model
        return jax.jit(
            lambda params, batch: task.eval_step(config, model, params, batch),
            in_shardings=(self.param_shardings, self.batch_sharding),
            out_shardings=self.batch_sharding,
        )

    def place_params(self, new_params: Any) -> Any:
        """A task's replacement params (e.g. a pretrained encoder) put into their shardings."""
        return _replace_params(new_params, self.abstract_state["params"])


def build_trainer(
    config: ml_collections.ConfigDict,
    task: tasks.Task,
    model_cfg: Any,
    model: nn.Module,
    mesh: jax.sharding.Mesh,
    schedule: Schedule,
) -> Trainer:
    """Derives the state's shardings and builds the train step; nothing is compiled yet."""
    rules = sharding.logical_rules(config)
    accum = int(config.optim.grad_accum_steps)
    batch_size = int(config.batch_size)
    sharding.check_batch_size(batch_size, mesh, accum)
    tx, learning_rate = optim.build(config.optim, schedule.total_steps, schedule.warmup_steps)

    def init_params(rng: jax.Array) -> Any:
        spec = task.batch_spec(config, model_cfg, 1)
        dummy = {k: jnp.zeros(s.shape, s.dtype) for k, s in spec.items()}
        return model.init({"params": rng, "dropout": rng}, dummy, train=False)["params"]

    # config.skip_nonfinite_steps = N > 0: up to N steps with a non-finite loss or gradient
    # leave params and optimizer state as they were (counted in state["nonfinite_skipped"]).
    skip_budget = int(config.get("skip_nonfinite_steps", 0) or 0)

    def init_state(rng: jax.Array) -> dict[str, Any]:
        params_rng, step_rng = jax.random.split(rng)
        params = nn.meta.unbox(init_params(params_rng))
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
            "rng": step_rng,
        }
        if skip_budget:
            state["nonfinite_skipped"] = jnp.zeros((), jnp.int32)
        return state

    rng = jax.random.PRNGKey(0)  # shapes only
    with jax.set_mesh(None), nn.logical_axis_rules(rules):  # see Trainer.init_state
        boxed = jax.eval_shape(init_params, rng)
        abstract_state = jax.eval_shape(init_state, rng)
    param_shardings = sharding.param_shardings(boxed, mesh, rules)
    replicated = sharding.replicated(mesh)
    state_shardings = {
        "step": replicated,
        "params": param_shardings,
        "opt_state": optax.tree_map_params(
            tx,
            lambda p, s: p if isinstance(p, optax.MaskedNode) else s,
            abstract_state["opt_state"],
            param_shardings,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, optax.MaskedNode),
        ),
        "rng": replicated,
    }
    if skip_budget:
        state_shardings["nonfinite_skipped"] = replicated
    sharding.check_divisible(abstract_state["params"], param_shardings)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        abstract_state,
        state_shardings,
    )
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state["params"]))

    def loss_and_grads(params: Any, batch: Any, step_rng: jax.Array):
        def loss(p: Any):
            return task.loss_fn(config, model, p, batch, step_rng, True)

        (_, step_metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return grads, step_metrics

    def train_step(state: dict[str, Any], batch: dict[str, jax.Array]):
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        params = state["params"]
        if accum == 1:
            grads, step_metrics = loss_and_grads(params, batch, step_rng)
        else:
            micro = jax.tree.map(lambda x: _split_microbatches(x, accum), batch)
            first = jax.tree.map(lambda x: x[0], micro)
            _, metric_shapes = jax.eval_shape(loss_and_grads, params, first, step_rng)

            def body(carry, inputs):
                i, microbatch = inputs
                g, m = loss_and_grads(params, microbatch, jax.random.fold_in(step_rng, i))
                g = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry[0], g)
                m = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry[1], m)
                return (g, m), None

            zeros = (
                jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
                jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), metric_shapes),
            )
            (grads, step_metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            grads = jax.tree.map(lambda g: g / accum, grads)
            step_metrics = jax.tree.map(lambda m: m / accum, step_metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        grad_norm = optax.tree.norm(grads)
        new_state = {**state, "step": state["step"] + 1, "params": params}
        new_state["opt_state"] = opt_state
        if skip_budget:
            finite = jnp.isfinite(grad_norm)
            if "loss" in step_metrics:
                finite &= jnp.isfinite(step_metrics["loss"])
            skip = ~finite & (state["nonfinite_skipped"] < skip_budget)
            for key in ("params", "opt_state"):  # the update is dropped, the step consumed
                new_state[key] = jax.tree.map(
                    lambda old, new: jnp.where(skip, old, new), state[key], new_state[key]
                )
            new_state["nonfinite_skipped"] = state["nonfinite_skipped"] + skip.astype(jnp.int32)
            step_metrics = {**step_metrics, "skipped_nonfinite": skip.astype(jnp.float32)}
        step_metrics = {
            **step_metrics,
            "learning_rate": learning_rate(state["step"]),
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(new_state["params"]),
        }
        return new_state, step_metrics

    batch_sharding = sharding.batch_sharding(mesh)
    jit_train_step = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    batch_spec = {
        k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sharding)
        for k, s in task.batch_spec(config, model_cfg, batch_size).items()
    }
    return Trainer(
        config=config,
        task=task,
        model=model,
        mesh=mesh,
        rules=rules,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        param_shardings=param_shardings,
        batch_sharding=batch_sharding,
        batch_spec=batch_spec,
        num_params=num_params,
        _init_state=init_state,
        _jit_train_step=jit_train_step,
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    dry_run: bool = False,
    devices: Sequence[jax.Device] | None = None,
) -> RunResult:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if it has one.

    dry_run: compile the train step for the configured model and mesh, log and return the
      parameter count, per-device memory and FLOPs per step; no data, no training.
    devices: the devices of the mesh (default: all).
    """
    config_lib.validate(config)
    workdir = pathlib.Path(workdir)
    if dry_run:
        return _run(config, workdir, dry_run=True, devices=devices)
    # Before any data is read or anything compiled: the directory is writable and ours alone.
    lock = workdir_lib.acquire(workdir, lock=jax.process_index() == 0)
    try:
        return _run(config, workdir, dry_run=False, devices=devices)
    finally:
        if lock is not None:
            lock.release()


def _run(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    *,
    dry_run: bool,
    devices: Sequence[jax.Device] | None,
) -> RunResult:
    # ------------------------------------------------------------------------------ setup
    task = tasks.get(config.task)
    mesh = sharding.make_mesh(config.mesh, devices)
    batch_size = int(config.batch_size)
    # build_trainer checks this too; here it fails before any data is read or tokenized.
    sharding.check_batch_size(batch_size, mesh, int(config.optim.grad_accum_steps))
    logging.info(
        "mesh %s over %d devices (%d processes); task %s",
        dict(mesh.shape),
        mesh.size,
        jax.process_count(),
        task.name,
    )

    data = None
    if not dry_run:
        host = tasks.HostInfo(
            seed=int(config.seed),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            local_batch_size=batch_size // jax.process_count(),
            global_batch_size=batch_size,
            workdir=str(workdir),
            batch_shards=max(sharding.data_parallel_size(mesh) // jax.process_count(), 1),
        )
        # Input files changed since the checkpoint to resume: named before the data pipeline
        # reads them (it would fail on a stale vocabulary, or silently read other data).
        input_fps = inputs.fingerprint(config)
        newest = checkpointing.peek_data_state(workdir)
        if newest is not None and inputs.STATE_KEY in newest[1]:
            where = f"{workdir}/checkpoints/{newest[0]}"
            inputs.check_unchanged(newest[1][inputs.STATE_KEY], input_fps, where)
        data = task.build_data(config, host)
    model_cfg, model = task.build_model(config, data)
    if data is not None and jax.process_index() == 0:
        # WORKDIR/run.json + the tokenizer's files: every loader works from these alone.
        run_manifest.write_run(workdir, config, model_cfg, data)
    schedule = resolve_schedule(config, data.steps_per_epoch if data else None, dry_run=dry_run)
    # ------------------------------------------------------------------ state and steps
    trainer = build_trainer(config, task, model_cfg, model, mesh, schedule)
    logging.info("model %s: %s parameters", model_cfg.head, f"{trainer.num_params:,}")
    if dry_run:
        compiled_step = trainer.step
        report = _dry_run_report(compiled_step, trainer.num_params, mesh, _flops(compiled_step))
        return RunResult(step=0, state=None, records=[], dry_run=report)

    # ------------------------------------------------------------------ init or restore
    ckpt = checkpointing.Checkpointer(workdir, keep=int(config.keep_checkpoints))
    start = ckpt.latest_step()
    if start is not None and start >= schedule.total_steps:
        metrics.log_console(
            f"{workdir} already holds step {start} of total_steps={schedule.total_steps}: "
            "nothing to train (raise config.total_steps to continue, or use another --workdir)"
        )
        ckpt.close()
        return RunResult(step=start, state=None, records=[])
    jit_eval_step = trainer.eval_step()
    best_metric = task.best_metric(config) if task.best_metric else None
    best = checkpointing.BestCheckpointer(workdir, *best_metric) if best_metric else None
    writer = metrics.MetricWriter(workdir)

    def position() -> dict[str, Any]:
        return {**data.train.get_state(), inputs.STATE_KEY: input_fps}

    # The newest checkpoint that restores; damaged ones are moved aside (see checkpointing).
    restored = ckpt.restore_latest(trainer.abstract_state) if start is not None else None
    if restored is None:
        start = 0
        state = trainer.init_state(jax.random.PRNGKey(int(config.seed)))
        if task.init_params is not None:
            state["params"] = trainer.place_params(
                task.init_params(config, model_cfg, state["params"])
            )
    else:
        start, state, data_state = restored
        saved_inputs = data_state.pop(inputs.STATE_KEY, None)
        if saved_inputs is not None:  # checked above against the newest; an older one here
            inputs.check_unchanged(saved_inputs, input_fps, f"{ckpt.directory}/{start}")
        data.train.set_state(data_state)
        logging.info("resumed from %s/%d", ckpt.directory, start)
    writer.truncate_after(start)

    # ------------------------------------------------------------------------- the loop
    records: list[dict[str, Any]] = []
    fetched: list[dict[str, float]] = []  # host copies of step metrics since the last log
    pending: list[tuple[int, Any]] = []  # device metrics not yet fetched
    batch_spec = trainer.batch_spec
    seq_len = batch_spec["input_ids"].shape[1] if "input_ids" in batch_spec else 0
    peak = metrics.peak_flops_per_device(mesh.devices.flat[0])
    # MFU counts model FLOPs (metrics.model_flops_per_step, as benchmarks/train_speed.py), not
    # XLA's count, which also has the element-wise ops and remat's recomputation.
    masked = (
        batch_spec["masked_lm_positions"].shape[1] if "masked_lm_positions" in batch_spec else 0
    )
    step_flops = metrics.model_flops_per_step(model_cfg, batch_size, seq_len, masked) / mesh.size
    step, last_saved = start, start if start else None
    # config.profile_steps: a jax.profiler trace of some steps (bertjax/profiling.py).
    profiler = profiling.StepProfiler(config.get("profile_steps", ""), workdir, start)
    # Rows the timed steps ran (packed batches run fewer than batch_size): tokens/s and MFU
    # count the work done, not the examples' padded equivalent.
    timer_start, timer_steps, timer_rows, excluded = None, 0, 0, 0.0

    def fetch_and_check() -> None:
        """Brings pending metrics to the host; raises on a non-finite value."""
        nonlocal pending
        for s, values in pending:
            host_values = {k: float(v) for k, v in jax.device_get(values).items()}
            if host_values.pop("skipped_nonfinite", 0.0):
                skipped = int(jax.device_get(state["nonfinite_skipped"]))
                metrics.log_console(
                    f"step {s}: non-finite loss {host_values.get('loss')} / grad_norm "
                    f"{host_values.get('grad_norm')}; update skipped (config.skip_nonfinite_steps"
                    f": {skipped} of {config.skip_nonfinite_steps} used by step {step})"
                )
                continue
            _check_finite(s, host_values, ckpt)
            fetched.append(host_values)
        pending = []

    try:
        with _Preemption() as preemption, trainer.context():
            while step < schedule.total_steps:
                if preemption.reached(step):
                    fetch_and_check()
                    if last_saved != step:
                        ckpt.save(step, state, position())
                    ckpt.wait()
                    logging.warning("preempted: saved step %d in %s", step, ckpt.directory)
                    break
                batch = sharding.global_batch(next(data.train), mesh, batch_size)
                compiling = trainer.compile_seconds
                step_fn = trainer.step_for(batch)
                excluded += trainer.compile_seconds - compiling  # a new shape's compilation
                profiler.before_step(step + 1)
                state, step_metrics = step_fn(state, batch)
                step += 1
                profiler.after_step(step, step_metrics)
                pending.append((step, step_metrics))
                if timer_start is None:  # time from the end of the first (compiling) step
                    jax.block_until_ready(step_metrics)
                    timer_start, timer_steps, timer_rows, excluded = time.time(), 0, 0, 0.0
                else:
                    timer_steps += 1
                    timer_rows += batch["input_ids"].shape[0] if "input_ids" in batch else 0

                last = step == schedule.total_steps
                do_log = step % config.log_every == 0 or last
                do_eval = schedule.eval_every >= 0 and (
                    last or (schedule.eval_every > 0 and step % schedule.eval_every == 0)
                )
                do_save = step % config.checkpoint_every == 0 or last
                if not (do_log or do_eval or do_save):
                    continue
                fetch_and_check()
                record: dict[str, Any] = {}
                if do_log and fetched:
                    record.update({k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]})
                    fetched.clear()
                    elapsed = time.time() - timer_start - excluded
                    if timer_steps > 0 and elapsed > 0:
                        steps_per_sec = timer_steps / elapsed
                        record["steps_per_sec"] = steps_per_sec
                        record["examples_per_sec"] = steps_per_sec * batch_size
                        rows_per_step = timer_rows / timer_steps if timer_rows else batch_size
                        if seq_len:
                            record["tokens_per_sec"] = steps_per_sec * rows_per_step * seq_len
                        if peak and step_flops:  # both per device; FLOPs scale with the rows
                            work = steps_per_sec * step_flops * rows_per_step / batch_size
                            record["mfu"] = work / peak
                    timer_start, timer_steps, timer_rows, excluded = time.time(), 0, 0, 0.0
                    metrics.log_console(
                        metrics.progress_line(
                            step, schedule.total_steps, record, record.get("steps_per_sec", 0)
                        )
                    )
                paused = time.time()
                if do_eval:
                    eval_record = _evaluate(task, config, data, jit_eval_step, state, mesh)
                    record.update(eval_record)
                    metrics.log_console(f"eval at step {step}: {_short(eval_record)}")
                    if best is not None and best.maybe_save(step, state["params"], eval_record):
                        metrics.log_console(f"new best {best.metric} = {best.best_value:.4f}")
                if record:
                    writer.write(step, record)
                    records.append({"step": step, **record})
                if do_save:
                    ckpt.save(step, state, position())
                    last_saved = step
                excluded += time.time() - paused

    finally:  # also on a non-finite loss: finish the saves of good states, close files
        profiler.stop()
        ckpt.close()
        if best is not None:
            best.close()
        writer.close()
    return RunResult(step=step, state=state, records=records)


def _replace_params(new_params: Any, abstract_params: Any) -> Any:
    """Puts a task's replacement params into the params' shardings, checking the structure."""
    expected = jax.tree_util.tree_structure(abstract_params)
    got = jax.tree_util.tree_structure(new_params)
    if expected != got:
        raise ValueError(
            f"task.init_params returned a tree of another structure:\n{got}\n!=\n{expected}"
        )

    def place(path, new, spec):
        if tuple(np.shape(new)) != tuple(spec.shape):
            raise ValueError(
                f"task.init_params: {jax.tree_util.keystr(path)} has shape {np.shape(new)}, "
                f"the model expects {spec.shape}"
            )
        return jax.device_put(jnp.asarray(new, spec.dtype), spec.sharding)

    return jax.tree_util.tree_map_with_path(place, new_params, abstract_params)


def _evaluate(task, config, data, jit_eval_step, state, mesh) -> dict[str, float]:
    """Runs every eval set of the task; returns {f"{set}/{metric}": value}."""
    out: dict[str, float] = {}
    for name, batches in data.eval_sets().items():
        chunks: list[dict[str, np.ndarray]] = []
        for local in batches:
            # Examples per host: a packed batch's token rows are fewer (cls_index: one each).
            rows = len(local["cls_index"] if "cls_index" in local else next(iter(local.values())))
            batch = sharding.global_batch(local, mesh, rows * jax.process_count())
            result = jit_eval_step(state["params"], batch)
            if jax.process_count() > 1:
                result = multihost_utils.process_allgather(result, tiled=True)
            chunks.append(jax.device_get(result))
        if not chunks:
            raise ValueError(f"eval set {name!r} of task {task.name!r} yielded no batches")
        gathered = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        for metric, value in task.eval_summary(config, gathered).items():
            out[f"{name}/{metric}"] = float(value)
    return out


def _short(record: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in record.items())


def _flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled executable, per device (XLA's count), if known."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _dry_run_report(compiled: Any, num_params: int, mesh: Any, flops: float | None) -> dict:
    """Parameter count, per-device memory and FLOPs of the compiled train step."""
    report: dict[str, Any] = {
        "params": num_params,
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "flops_per_step_per_device": flops,
    }
    try:
        memory = compiled.memory_analysis()
    except Exception:
        memory = None
    if memory is not None:
        fields = (
            "argument_size_in_bytes",
            "output_size_in_bytes",
            "alias_size_in_bytes",
            "temp_size_in_bytes",
            "generated_code_size_in_bytes",
        )
        for field in fields:
            report[field] = int(getattr(memory, field, 0) or 0)
        # Donated state aliases the outputs: count it once.
        report["peak_bytes_per_device_estimate"] = (
            report["argument_size_in_bytes"]
            + report["output_size_in_bytes"]
            - report["alias_size_in_bytes"]
            + report["temp_size_in_bytes"]
        )
    gib = 1024**3
    lines = [
        f"dry run: {num_params:,} parameters; mesh {dict(mesh.shape)} ({mesh.size} devices)",
    ]
    if memory is not None:
        lines.append(
            "per-device memory: arguments {:.2f} GiB, outputs {:.2f} GiB (aliased {:.2f} GiB), "
            "temporaries {:.2f} GiB; peak estimate {:.2f} GiB".format(
                report["argument_size_in_bytes"] / gib,
                report["output_size_in_bytes"] / gib,
                report["alias_size_in_bytes"] / gib,
                report["temp_size_in_bytes"] / gib,
                report["peak_bytes_per_device_estimate"] / gib,
            )
        )
    if flops:
        lines.append(
            f"FLOPs per step: {flops / 1e12:.3f} TFLOP per device, "
            f"{flops * mesh.size / 1e12:.3f} TFLOP in total"
        )
    for line in lines:
        print(line, flush=True)
    return report
