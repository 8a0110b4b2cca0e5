"""Entry point: ``python -m bertjax.main --config=configs/NAME.py --workdir=DIR [--config.KEY=V]``.

Kept short on purpose: everything happens in `bertjax.train.run`.

Multi-host: on Cloud TPU VMs, GKE, SLURM and Open MPI, JAX finds its peers by itself (no
flag needed). Elsewhere pass ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` to every process (`launch/local_multiprocess.py` does this on one machine).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, logs.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Compile the train step and print params, memory and FLOPs; no training."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process in the job.")


def _start_distributed() -> None:
    """Starts jax.distributed from the flags, else from what JAX detects, else not at all.

    With no flags, `jax.distributed.initialize()` looks for a cluster it knows (Cloud TPU VM
    metadata, GKE, SLURM, Open MPI) and raises at once when there is none: one process.
    """
    import jax

    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise app.UsageError(
                "--coordinator_address, --num_processes and --process_id go together"
            )
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
        return
    try:
        jax.distributed.initialize()
    except ValueError as e:
        if "coordinator_address" not in str(e):
            raise
        logging.info("no cluster detected: running as a single process")


class _QuietLibraries:
    """Drops INFO lines of libraries that narrate every checkpoint (Orbax), keeps warnings."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None and not _DRY_RUN.value:
        raise app.UsageError("--workdir is required (unless --dry_run)")
    from bertjax import config_lib

    try:  # before jax.distributed: a mistyped run fails in a second, not after a barrier
        for note in config_lib.resolve_command_line(
            _CONFIG.value, config_lib.override_keys(sys.argv[1:])
        ):
            logging.warning("%s", note)
    except ValueError as e:
        sys.exit(f"error: {e}")
    _start_distributed()
    from bertjax import train  # after jax.distributed: importing jax alone is fine, using it is not

    try:
        train.run(_CONFIG.value, _WORKDIR.value or "/tmp/bertjax_dry_run", dry_run=_DRY_RUN.value)
    except (
        train.NonFiniteLossError,
        train.checkpointing.NoGoodCheckpointError,
        train.checkpointing.CheckpointSaveError,
        train.workdir_lib.WorkdirError,
        train.inputs.InputsChangedError,
    ) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a one-line error for a config key that does not exist."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull for help.")
    except (AttributeError, KeyError) as e:
        from bertjax import config_lib

        for arg in argv[1:]:
            if not arg.startswith("--config."):
                continue
            key = arg[len("--config.") :].split("=", 1)[0]
            config = _load_config_for_message(argv)
            message = config is not None and config_lib.unknown_key_message(config, key)
            if message:
                sys.exit(f"error: {message} (from {arg})")
        sys.exit(f"error: bad config override: {e}")


def _load_config_for_message(argv: list[str]):
    from bertjax import config_lib

    for i, arg in enumerate(argv):
        path = None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            try:
                return config_lib.load(path)
            except Exception:  # the original parse error is reported instead
                return None
    return None


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=_parse_flags)
