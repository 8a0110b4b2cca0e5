"""The same data on any topology: one process with 4 devices and two processes with 2 devices
each train to the same losses, and a run checkpointed by 2 processes resumes in 1 (params
resharded by Orbax, the data position carried over) with the losses of an uninterrupted run.
See docs/reliability.md."""

import shutil

import jax
import pytest
from launch_util import CONFIG, TWO_PROCESS_OVERRIDES, read_metrics

from bertjax import config_lib, train

KEYS = ("loss", "mlm_loss", "nsp_loss", "grad_norm", "param_norm")

pytestmark = pytest.mark.slow


def _records(workdir):
    return {r["step"]: r for r in read_metrics(workdir)}


def _assert_close(got, want, steps):
    for step in steps:
        for key in KEYS:
            g, w = got[step][key], want[step][key]
            assert abs(g - w) <= 1e-3 * abs(w), (step, key, g, w)


def test_one_process_and_two_processes_train_alike_and_resume_across(tmp_path, two_process_job):
    # The 2-process job (mesh data=2 x tensor=2: each process holds half of every split
    # parameter) is the `two_process_job` fixture, shared with tests/test_train_multiprocess.py.
    job_dir, output = two_process_job
    assert "(2 processes)" in output
    config = config_lib.load(CONFIG, TWO_PROCESS_OVERRIDES)
    train.run(config, tmp_path / "one", devices=jax.devices()[:4])
    want = _records(tmp_path / "one")

    two = tmp_path / "two"
    shutil.copytree(job_dir, two)
    _assert_close(_records(two), want, steps=(1, 2, 3, 4))

    # Checkpointed by 2 processes at step 2, resumed by 1 process (4 devices) to step 4.
    shutil.rmtree(two / "checkpoints" / "4")
    result = train.run(config, two, devices=jax.devices()[:4])
    assert result.step == 4
    again = _records(two)
    assert sorted(again) == [1, 2, 3, 4]
    _assert_close(again, want, steps=(3, 4))
