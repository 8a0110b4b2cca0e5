"""The same data on any topology: one process with 4 devices and two processes with 2 devices
each train to the same losses, and a run checkpointed by 2 processes resumes in 1 (params
resharded by Orbax, the data position carried over) with the losses of an uninterrupted run.
See docs/reliability.md."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import pytest

from bertjax import config_lib, train

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {
    "model.num_layers": 1,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "model.intermediate_size": 64,
    "model.max_position_embeddings": 32,
    "data.max_seq_length": 32,
    "data.max_predictions_per_seq": 5,
    "data.vocab_size": 1000,
    "batch_size": 8,
    "total_steps": 4,
    "log_every": 1,
    "eval_every": -1,
    "checkpoint_every": 2,
    "keep_checkpoints": 2,
    "optim.warmup_steps": 1,
}
KEYS = ("loss", "mlm_loss", "nsp_loss", "grad_norm", "param_norm")

pytestmark = pytest.mark.slow


def _records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def _two_processes(workdir):
    args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    result = subprocess.run(
        [
            sys.executable,
            "launch/local_multiprocess.py",
            "--num_processes=2",
            "--devices_per_process=2",
            "--",
            "--config=configs/bert_tiny_pretrain.py",
            f"--workdir={workdir}",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "(2 processes)" in result.stdout + result.stderr


def _assert_close(got, want, steps):
    for step in steps:
        for key in KEYS:
            g, w = got[step][key], want[step][key]
            assert abs(g - w) <= 1e-3 * abs(w), (step, key, g, w)


def test_one_process_and_two_processes_train_alike_and_resume_across(tmp_path):
    config = config_lib.load("configs/bert_tiny_pretrain.py", OVERRIDES)
    train.run(config, tmp_path / "one", devices=jax.devices()[:4])
    want = _records(tmp_path / "one")

    two = tmp_path / "two"
    _two_processes(two)
    _assert_close(_records(two), want, steps=(1, 2, 3, 4))

    # Checkpointed by 2 processes at step 2, resumed by 1 process (4 devices) to step 4.
    shutil.rmtree(two / "checkpoints" / "4")
    result = train.run(config, two, devices=jax.devices()[:4])
    assert result.step == 4
    again = _records(two)
    assert sorted(again) == [1, 2, 3, 4]
    _assert_close(again, want, steps=(3, 4))
