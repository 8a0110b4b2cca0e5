"""Checkpoints: the only module that talks to Orbax.

Layout of a run directory::

    WORKDIR/checkpoints/<step>/state/   params, optimizer state, step, RNG (Orbax, sharded arrays)
    WORKDIR/checkpoints/<step>/data/    each host's data-iterator position, one JSON per process
    WORKDIR/best/<step>/params/         params of the best eval so far (tasks with a best metric)
    WORKDIR/best/<step>/metrics/        the eval metrics of that step (JSON)

Saves are asynchronous (the arrays are copied to host memory, then written in the background
while training continues) and atomic: Orbax writes into a temporary directory and renames it
when every host has finished, so a run killed mid-save leaves only complete checkpoints behind
and `latest_step()` never sees a partial one.

A committed checkpoint can still be damaged later (a truncated or overwritten file, a bad
disk): `Checkpointer.restore_latest` then moves the step that fails to restore aside to
``WORKDIR/checkpoints/bad-<step>-<reason>/`` (with the error in ``WHY.txt``; nothing is
deleted) and falls back to the next newer-to-older step. A failed save (e.g. ENOSPC) raises
`CheckpointSaveError`; Orbax's temporary directory of that step is removed on the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils


class NoGoodCheckpointError(RuntimeError):
    """Every checkpoint of a run directory failed to restore (each was moved aside)."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (e.g. the disk is full); the older checkpoints are intact."""


# ---------------------------------------------------------------------------------------------
# Per-host JSON (the data iterator's position differs on every host).
# ---------------------------------------------------------------------------------------------


def _absolute(path: str | os.PathLike) -> epath.Path:
    """`path` as Orbax needs it: absolute. A relative local path (e.g. `--workdir=runs/x`) is
    taken from the current directory; URLs such as gs://bucket/run are already absolute."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def _host_file(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class HostStateHandler(ocp.CheckpointHandler):
    """Saves a JSON-able dict per process (Orbax's JsonSave writes only the primary host's)."""

    def save(self, directory: epath.Path, args: HostStateSave) -> None:
        _host_file(directory).write_text(json.dumps(args.state, sort_keys=True))

    def restore(self, directory: epath.Path, args: HostStateRestore | None = None) -> dict:
        return read_host_state(directory)

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


def read_host_state(directory: epath.Path) -> dict[str, Any]:
    """This process's saved data state; from a checkpoint of another process count only when
    every process saved the same state (a data order that does not depend on the hosts)."""
    path = _host_file(directory)
    if path.exists():
        return json.loads(path.read_text())
    files = sorted(directory.glob("process_*-of-*.json"))
    states = [json.loads(p.read_text()) for p in files]
    if states and all(s == states[0] for s in states):
        return states[0]
    raise ValueError(
        f"{path} does not exist: this checkpoint was written by a different number of "
        f"processes (found {[p.name for p in files]}) whose data positions differ (a per-host "
        "data order); restart with the same number of processes"
    )


@ocp.args.register_with_handler(HostStateHandler, for_save=True)
@dataclasses.dataclass
class HostStateSave(ocp.args.CheckpointArgs):
    state: dict[str, Any]


@ocp.args.register_with_handler(HostStateHandler, for_restore=True)
@dataclasses.dataclass
class HostStateRestore(ocp.args.CheckpointArgs):
    pass


# ---------------------------------------------------------------------------------------------
# Training checkpoints.
# ---------------------------------------------------------------------------------------------


def _tune_array_handler() -> None:
    """On CPU, saves each replicated array from one replica instead of slicing it across all.

    Orbax's replica-parallel saving (its default off GPU) spreads the write of a replicated
    array over its replicas, which pays on TPU pods; on CPU it compiles a slicing program per
    array shape and made the first save of a small model take ~10 s instead of ~0.1 s.
    """
    if jax.default_backend() == "cpu":
        handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpointer:
    """Saves and restores the train state and the data position of a run directory.

    `state` is the train loop's pytree (a dict of arrays); `data_state` this host's
    iterator position (`iterator.get_state()`).
    """

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, async_save: bool = True):
        _tune_array_handler()
        self.directory = _absolute(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            # Leftovers of a save that was killed midway are removed on start-up.
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._saving: int | None = None  # the step of the newest save started

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None) -> None:
        """Starts an asynchronous save of `state` (+ this host's data position) at `step`.

        Raises `CheckpointSaveError` when this save or the previous (background) one failed.
        """
        # Copy the position now: the iterator moves on while Orbax writes.
        data = json.loads(json.dumps(dict(data_state or {})))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=HostStateSave(data))
        with self._save_errors():
            self._manager.wait_until_finished()  # an error of the previous save surfaces here
            self._saving = step
            self._manager.save(step, args=args, force=True)

    @contextlib.contextmanager
    def _save_errors(self):
        """Turns an OSError of a save (raised now or surfacing from a background write of an
        earlier step) into a `CheckpointSaveError` that says what is still safe on disk."""
        try:
            yield
        except Exception as error:
            if not _is_os_error(error):
                raise
            failed = self._saving
            committed = [s for s in self.all_steps() if s != failed]
            last = max(committed) if committed else None
            cause = "the disk is full (ENOSPC)" if _is_enospc(error) else f"{error}"
            raise CheckpointSaveError(
                f"saving the checkpoint of step {failed} in {self.directory} failed: {cause}. "
                "The last committed checkpoint is "
                + (f"step {last}, intact" if last is not None else "none")
                + "; free space and restart to resume from it (the unfinished save is removed "
                "on start)."
            ) from error

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data_state) of the newest checkpoint that restores, or None if none.

        A step that fails to restore is logged, moved aside to ``bad-<step>-<reason>`` (never
        deleted) and the next older one is tried; `NoGoodCheckpointError` when all fail.
        """
        bad: list[str] = []
        for step in sorted(self.all_steps(), reverse=True):
            error = None
            try:
                state, data_state = self.restore(step, abstract_state)
                _check_restored_finite(state)
            except Exception as e:  # tensorstore, JSON and ValueErrors alike: the step is bad
                error = e
            if _agree_ok(error is None):
                return step, state, data_state
            if error is None:
                error = RuntimeError("another process could not restore this step")
            bad.append(self._quarantine(step, error))
        if bad:
            raise NoGoodCheckpointError(
                f"no checkpoint in {self.directory} restores; moved aside: {bad}. Move one back "
                "if it is usable, or remove them to start from scratch."
            )
        return None

    def _quarantine(self, step: int, error: BaseException) -> str:
        """Moves the step directory aside (process 0) and makes the manager forget it."""
        reason = _reason(error)
        target = self.directory / f"bad-{step}-{reason}"
        if jax.process_index() == 0:
            n = 1
            while target.exists():  # never overwrite an earlier quarantined copy
                n += 1
                target = self.directory / f"bad-{step}-{reason}-{n}"
            os.rename(os.fspath(self.directory / str(step)), os.fspath(target))
            (target / "WHY.txt").write_text(_error_text(error) + "\n")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"bertjax_quarantine_{step}")
        logging.error(
            "checkpoint step %d in %s does not restore (%s; %s); moved it to %s and trying "
            "the next older one",
            step,
            self.directory,
            reason,
            _error_text(_chain(error)[-1]).splitlines()[0][:300],
            target.name,
        )
        self._manager.reload()
        return target.name

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """(state, data_state) of `step`, with arrays laid out as `abstract_state`'s shardings.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct` with `.sharding` set.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=HostStateRestore()
        )
        restored = self._manager.restore(step, args=args)
        return restored["state"], restored["data"]

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _is_os_error(error: BaseException) -> bool:
    return any(isinstance(e, OSError) for e in _chain(error)) or "ENOSPC" in _error_text(error)


def _is_enospc(error: BaseException) -> bool:
    return any(
        isinstance(e, OSError) and e.errno == errno.ENOSPC for e in _chain(error)
    ) or "No space left on device" in _error_text(error)


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from (tensorstore's reason is often there)."""
    out: list[BaseException] = []
    while error is not None and all(error is not e for e in out):
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def _error_text(error: BaseException) -> str:
    return "\n".join(f"{type(e).__name__}: {e}" for e in _chain(error))


def _reason(error: BaseException) -> str:
    """A short directory-name-safe word for why a checkpoint is bad."""
    if isinstance(error, NonFiniteCheckpointError):
        return "nonfinite"
    text = _error_text(error).lower()
    for needle, word in (
        ("out_of_range", "truncated"),
        ("data_loss", "corrupt"),
        ("checksum", "corrupt"),
        ("json", "bad-json"),
        ("not found", "missing-file"),
        ("no such file", "missing-file"),
        ("does not exist", "missing-file"),
    ):
        if needle in text:
            return word
    return re.sub(r"[^a-z0-9]+", "-", type(error).__name__.lower()).strip("-") or "unreadable"


class NonFiniteCheckpointError(ValueError):
    """A checkpoint's parameters hold NaN or Inf (bytes damaged in a way that still decodes)."""


def _check_restored_finite(state: Any) -> None:
    params = state.get("params") if isinstance(state, Mapping) else None
    if params is None:
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating) and not bool(
            jax.numpy.isfinite(leaf).all()
        ):
            raise NonFiniteCheckpointError(
                f"params{jax.tree_util.keystr(path)} holds NaN or Inf values"
            )


def _agree_ok(ok: bool) -> bool:
    """True only if `ok` on every process (one host failing to read a step makes it bad)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))


def peek_data_state(workdir: str | pathlib.Path) -> tuple[int, dict[str, Any]] | None:
    """(step, this host's data state) of the newest committed checkpoint, read as plain JSON
    without Orbax (cheap: the run checks its inputs against it before building its data).
    None when there is none or it cannot be read (restoring will then say why)."""
    root = _absolute(workdir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [int(p.name) for p in root.iterdir() if _committed(p)]
    if not steps:
        return None
    step = max(steps)
    try:
        return step, read_host_state(root / str(step) / "data")
    except (OSError, ValueError):
        return None


def _committed(step_dir: epath.Path) -> bool:
    """A finished step directory (Orbax renames the temporary one when it commits)."""
    return step_dir.name.isdigit() and any(
        (step_dir / name).exists() for name in ("_CHECKPOINT_METADATA", "commit_success.txt")
    )


class BestCheckpointer:
    """Keeps the params of the best evaluation so far in WORKDIR/best (one checkpoint)."""

    def __init__(self, workdir: str | pathlib.Path, metric: str, mode: str):
        if mode not in ("max", "min"):
            raise ValueError(f"best-metric mode {mode!r} must be 'max' or 'min'")
        self.metric, self.mode = metric, mode
        self.directory = _absolute(workdir) / "best"
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self.best_value: float | None = None
        self.best_step: int | None = self._manager.latest_step()
        if self.best_step is not None:  # resumed run: compare against what is on disk
            metrics = self._manager.restore(
                self.best_step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore())
            )["metrics"]
            self.best_value = float(metrics[metric])

    def is_better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def maybe_save(self, step: int, params: Any, metrics: Mapping[str, float]) -> bool:
        """Saves `params` when `metrics[self.metric]` beats the best so far; True if it did."""
        if self.metric not in metrics:
            raise KeyError(
                f"best metric {self.metric!r} is not among the eval metrics {sorted(metrics)}"
            )
        value = float(metrics[self.metric])
        if not self.is_better(value):
            return False
        self.best_value, self.best_step = value, step
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            metrics=ocp.args.JsonSave({k: float(v) for k, v in metrics.items()}),
        )
        self._manager.save(step, args=args, force=True)
        return True

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# ---------------------------------------------------------------------------------------------
# Reading params for another run (fine-tuning from a pretraining run, evaluation, conversion).
# ---------------------------------------------------------------------------------------------


def _step_dir(path: epath.Path) -> tuple[epath.Path, str]:
    """(step directory, item name) that `path` points at; see `restore_params`."""

    def latest(root: epath.Path) -> epath.Path:
        steps = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {root}")
        return root / str(steps[-1])

    if (path / "best").is_dir() and any((path / "best").iterdir()):
        return latest(path / "best"), "params"
    if (path / "checkpoints").is_dir():
        return latest(path / "checkpoints"), "state"
    if (path / "state").is_dir():
        return path, "state"
    if (path / "params").is_dir():
        return path, "params"
    if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
        step_dir = latest(path)
        return step_dir, "params" if (step_dir / "params").is_dir() else "state"
    raise FileNotFoundError(
        f"{path} is not a bertjax workdir, checkpoints directory or checkpoint step directory"
    )


def restore_params(path: str | pathlib.Path) -> dict[str, Any]:
    """The params of a bertjax checkpoint as a tree of numpy arrays (on the host).

    `path` may be a run directory (its best checkpoint when it has one, else its latest), its
    `checkpoints/` or `best/` directory (latest step), or one step directory.
    """
    step_dir, item = _step_dir(_absolute(path))
    item_dir = step_dir / item
    metadata = ocp.PyTreeCheckpointer().metadata(item_dir)
    tree = getattr(metadata, "item_metadata", None) or metadata
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ocp.PyTreeCheckpointer().restore(
        item_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args)
    )
    return restored["params"] if item == "state" else restored
