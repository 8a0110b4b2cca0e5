"""Helpers of the tests that train configs/bert_tiny_pretrain.py shrunk to a tiny model, in this
process or through `launch/local_multiprocess.py` (tests/test_train_multiprocess.py,
tests/test_faults_topology.py and tests/test_train_resume.py start `bertjax.main` in processes
of their own)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/bert_tiny_pretrain.py"
# L1/H32, seq 32, a 1000-token vocabulary, batch 8: a step takes milliseconds and the program
# compiles in seconds. Tests add their own schedule, logging and checkpoint keys.
TINY_MODEL = {
    "model.num_layers": 1,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "model.intermediate_size": 64,
    "model.max_position_embeddings": 32,
    "data.max_seq_length": 32,
    "data.max_predictions_per_seq": 5,
    "data.vocab_size": 1000,
    "batch_size": 8,
}

# The 2-process job of tests/test_train_multiprocess.py and tests/test_faults_topology.py (the
# `two_process_job` fixture of tests/conftest.py runs it once for both): 4 steps, checkpoints at
# steps 2 and 4, eval at the end; data parallel across the two processes and tensor parallel
# inside each, so that the parameters are really split between the processes.
TWO_PROCESS_OVERRIDES = {
    **TINY_MODEL,
    "total_steps": 4,
    "log_every": 1,
    "eval_every": 0,  # at the end
    "eval_batches": 2,
    "checkpoint_every": 2,
    "keep_checkpoints": 2,
    "optim.warmup_steps": 1,
    "mesh.data": 2,
    "mesh.fsdp": 1,
    "mesh.tensor": 2,
}


def config_flags(overrides: dict) -> list[str]:
    """`--config.KEY=VALUE` flags of `bertjax.main` for the overrides."""
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def compilation_cache_env(cache_dir: pathlib.Path | str) -> dict[str, str]:
    """This process's environment plus JAX's persistent compilation cache in `cache_dir`.

    Processes that compile the same programs (a job and its restarts) then compile them once;
    every program is cached, however small or quick to compile. In a multi-process job only
    process 0's programs are (JAX keys the entries per process and writes process 0's only).
    """
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def run_two_processes(
    workdir: pathlib.Path, overrides: dict, *, cache_dir: pathlib.Path | str | None = None
) -> subprocess.CompletedProcess:
    """`launch/local_multiprocess.py`: 2 processes with 2 CPU devices each train CONFIG with the
    overrides in `workdir`; asserts that the job succeeded as a 2-process job."""
    result = subprocess.run(
        [
            sys.executable,
            "launch/local_multiprocess.py",
            "--num_processes=2",
            "--devices_per_process=2",
            "--",
            f"--config={CONFIG}",
            f"--workdir={workdir}",
            *config_flags(overrides),
        ],
        cwd=REPO,
        env=compilation_cache_env(cache_dir) if cache_dir else None,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "(2 processes)" in result.stdout + result.stderr
    return result


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    """WORKDIR/metrics.jsonl, one dict a line."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
