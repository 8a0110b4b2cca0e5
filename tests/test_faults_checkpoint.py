"""Checkpoint faults injected into real (tiny) runs: damaged newest step, full disk, kill -9
during a save, two runs on one workdir, an unwritable workdir. See docs/reliability.md."""

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from launch_util import TINY_MODEL

from bertjax import checkpointing, config_lib, train, workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/bert_tiny_pretrain.py"
TINY = {
    **TINY_MODEL,
    "log_every": 1,
    "eval_every": -1,
    "checkpoint_every": 2,
    "keep_checkpoints": 3,
    "optim.warmup_steps": 1,
}


def tiny_config(**overrides):
    return config_lib.load(CONFIG, {**TINY, **overrides})


def run(path, total_steps):
    return train.run(tiny_config(total_steps=total_steps), path, devices=jax.devices()[:1])


def metrics_of(path):
    return {
        r["step"]: r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory with the checkpoints of steps 2 and 4, and the losses up to step 6.

    One run to step 6 gives both: its directory without the step-6 checkpoint is a run stopped
    after saving step 4 (a resumed run drops the logged steps after the one it restores).
    """
    reference = tmp_path_factory.mktemp("reference")
    run(reference, 6)
    path = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(reference, path)
    shutil.rmtree(path / "checkpoints" / "6")
    ckpt = checkpointing.Checkpointer(path, keep=3)
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()
    return path, metrics_of(reference)


def _copy(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained[0], target)
    return target


def _array_files(step_dir):
    files = sorted(p for p in (step_dir / "state").rglob("d/*") if p.is_file())
    assert files, f"no array data files under {step_dir}"
    return files


def _damage(step_dir, how):
    for f in _array_files(step_dir):
        data = bytearray(f.read_bytes())
        if how == "truncate":
            f.write_bytes(bytes(data[: len(data) // 3]))
        else:  # overwrite the second half with other bytes, same length
            half = len(data) // 2
            data[half:] = bytes((b ^ 0x5A) for b in data[half:])
            f.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "corrupt"])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes(trained, tmp_path, how):
    path = _copy(trained, tmp_path)
    _damage(path / "checkpoints" / "4", how)
    before = {p.name: p.read_bytes() for p in _array_files(path / "checkpoints" / "4")}
    result = run(path, 6)
    assert result.step == 6
    names = sorted(p.name for p in (path / "checkpoints").iterdir())
    bad = [n for n in names if n.startswith("bad-4-")]
    assert len(bad) == 1, names  # kept, under a name that says which step and why
    assert (path / "checkpoints" / bad[0] / "WHY.txt").read_text().strip()
    # The bad bytes are kept as they were; the new step 4 is a fresh, good save.
    after = {p.name: p.read_bytes() for p in _array_files(path / "checkpoints" / bad[0])}
    assert after == before
    assert {"2", "4", "6"} <= set(names)
    # Resumed from step 2: steps 3..6 again, with the losses of an uninterrupted run.
    got, want = metrics_of(path), trained[1]
    for step in (3, 4, 5, 6):
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-5), step


def test_no_good_checkpoint_is_a_clear_error_and_nothing_is_deleted(trained, tmp_path):
    path = _copy(trained, tmp_path)
    for step in ("2", "4"):
        _damage(path / "checkpoints" / step, "truncate")
    with pytest.raises(checkpointing.NoGoodCheckpointError, match="no checkpoint in .* restores"):
        run(path, 6)
    names = sorted(p.name for p in (path / "checkpoints").iterdir())
    assert [n.split("-")[1] for n in names if n.startswith("bad-")] == ["2", "4"]


def _fail_second_save(monkeypatch, action):
    """HostStateHandler.save (part of every training checkpoint) fails on its 2nd call."""
    calls = []
    original = checkpointing.HostStateHandler.save

    def save(self, directory, args):
        calls.append(directory)
        if len(calls) == 2:
            action()
        return original(self, directory, args)

    monkeypatch.setattr(checkpointing.HostStateHandler, "save", save)


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    def enospc():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    _fail_second_save(monkeypatch, enospc)
    path = tmp_path / "run"
    with pytest.raises(checkpointing.CheckpointSaveError) as e:
        run(path, 4)
    message = str(e.value)
    assert "step 4" in message and "ENOSPC" in message and "step 2, intact" in message
    monkeypatch.undo()
    # The next start resumes from step 2 (the unfinished save of step 4 is cleaned up).
    result = run(path, 4)
    assert result.step == 4
    assert sorted(checkpointing.Checkpointer(path, keep=3).all_steps()) == [2, 4]


@pytest.mark.slow
def test_kill_9_during_a_save_resumes_from_the_last_committed_step(tmp_path):
    path = tmp_path / "run"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
sys.path.insert(0, {str(REPO / "tests")!r})
import conftest  # 8 fake devices, CPU
import test_faults_checkpoint as t

class _Patch:
    def setattr(self, obj, name, value):
        setattr(obj, name, value)

t._fail_second_save(_Patch(), lambda: os.kill(os.getpid(), signal.SIGKILL))
t.run({str(path)!r}, 4)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert checkpointing.Checkpointer(path, keep=3).all_steps() == [2]
    result = run(path, 4)
    assert result.step == 4
    assert sorted(checkpointing.Checkpointer(path, keep=3).all_steps()) == [2, 4]


def _lock(path, **fields):
    path.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": "x"}
    info["heartbeat"] = time.time()
    info.update(fields)
    (path / ".lock").write_text(json.dumps(info))


def test_a_second_run_on_a_locked_workdir_refuses_at_once_naming_the_other(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _lock(tmp_path, pid=holder.pid, host=socket.gethostname())
        started = time.time()
        with pytest.raises(workdir.WorkdirError) as e:
            run(tmp_path, 2)
        assert time.time() - started < 30  # before any data or compilation
        message = str(e.value)
        assert f"pid {holder.pid}" in message and f"host {socket.gethostname()}" in message
        # Another host's lock with a fresh heartbeat is respected too.
        _lock(tmp_path, pid=1, host="other-host")
        with pytest.raises(workdir.WorkdirError, match="host other-host"):
            workdir.acquire(tmp_path, lock=True)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "checkpoints").exists()


def test_a_lock_left_by_a_killed_run_is_stale(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(tmp_path, pid=dead.pid)
    lock = workdir.acquire(tmp_path, lock=True)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()
    # Another host's lock whose heartbeat stopped long ago.
    _lock(tmp_path, pid=1, host="other-host", heartbeat=time.time() - 2 * workdir.STALE_AFTER_S)
    workdir.acquire(tmp_path, lock=True).release()


def test_a_finished_run_releases_the_lock_and_says_when_there_is_nothing_to_do(
    trained, tmp_path, caplog
):
    # absl's own logger: an earlier test that parsed absl flags leaves it at WARNING.
    caplog.set_level(logging.INFO, logger="absl")
    caplog.set_level(logging.INFO)
    path = _copy(trained, tmp_path)
    assert not (path / ".lock").exists()
    assert run(path, 4).step == 4
    assert "already holds step 4 of total_steps=4" in caplog.text
    assert not (path / ".lock").exists()


def test_unwritable_workdir_fails_before_data_or_compilation(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("reached data building / compilation")

    monkeypatch.setattr(train, "build_trainer", must_not_run)
    monkeypatch.setattr(train.sharding, "make_mesh", must_not_run)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(workdir.WorkdirError, match="not writable"):
        run(blocker / "run", 2)
    if os.geteuid() != 0:  # root writes through permission bits
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o500)
        with pytest.raises(workdir.WorkdirError, match="not writable"):
            run(readonly / "run", 2)


def test_restored_params_are_checked_for_nan(tmp_path):
    """A checkpoint whose bytes decode to NaN is bad too (not trained on)."""
    state = {"params": {"w": jax.numpy.array([1.0, np.nan])}}
    with pytest.raises(checkpointing.NonFiniteCheckpointError, match=r"params\['w'\]"):
        checkpointing._check_restored_finite(state)
