"""Preemption and crashes through the real entry point: kill -9, SIGTERM, restart, same losses.

One uninterrupted run is the reference. A second run in another directory is killed with
SIGKILL mid-run, restarted, stopped with SIGTERM (which must save and exit 0), and restarted
again to the end: every logged step must then carry the reference's losses, bit for bit.
"""

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from launch_util import CONFIG, REPO, TINY_MODEL, compilation_cache_env, config_flags

TOTAL_STEPS = 40
OVERRIDES = {
    **TINY_MODEL,
    "total_steps": TOTAL_STEPS,
    "log_every": 1,
    "eval_every": -1,
    "checkpoint_every": 4,
    "keep_checkpoints": 2,
    "optim.warmup_steps": 4,
}
COMPARED = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "grad_norm", "param_norm")

pytestmark = pytest.mark.slow


def _start(workdir: pathlib.Path, cache: pathlib.Path) -> subprocess.Popen:
    # All runs compile the same programs: share them through JAX's persistent cache.
    env = compilation_cache_env(cache)
    log = open(workdir.parent / f"{workdir.name}.log", "a")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bertjax.main",
            f"--config={CONFIG}",
            f"--workdir={workdir}",
            *config_flags(OVERRIDES),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _records(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def _wait_for_step(
    proc: subprocess.Popen, workdir: pathlib.Path, step: int, checkpoint: int = 0, timeout=240
) -> int:
    """Waits until `step` is logged and a complete checkpoint >= `checkpoint` exists."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = _records(workdir)
        saved = _checkpoint_steps(workdir)
        if records and records[-1]["step"] >= step and saved and saved[-1] >= checkpoint:
            return records[-1]["step"]
        if proc.poll() is not None:
            log = (workdir.parent / f"{workdir.name}.log").read_text()[-3000:]
            pytest.fail(f"run exited with {proc.returncode} before step {step}:\n{log}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout}s")


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    root = workdir / "checkpoints"
    if not root.exists():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def test_kill_9_and_sigterm_then_restart_give_the_uninterrupted_losses(tmp_path):
    cache = tmp_path / "jax_cache"
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    resumed.mkdir()

    proc = _start(reference, cache)
    assert proc.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    expected = {r["step"]: r for r in _records(reference)}
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))

    # 1. SIGKILL after the step-4 checkpoint exists: no chance to clean up.
    proc = _start(resumed, cache)
    _wait_for_step(proc, resumed, 6, checkpoint=4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _records(resumed)[-1]["step"]
    assert _checkpoint_steps(resumed), "no checkpoint survived the kill"

    # 2. Restart; then SIGTERM (a preemption notice): it must save where it is and exit 0.
    restart_from = max(_checkpoint_steps(resumed))
    proc = _start(resumed, cache)
    # Steps the killed run never reached: proof that the new process is in its loop.
    _wait_for_step(proc, resumed, killed_at + 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    log = (tmp_path / "resumed.log").read_text()
    assert "preempted: saved step" in log
    stopped_at = _records(resumed)[-1]["step"]
    assert stopped_at < TOTAL_STEPS, "the run finished before SIGTERM arrived"
    assert max(_checkpoint_steps(resumed)) == stopped_at

    # 3. Restart to the end.
    proc = _start(resumed, cache)
    assert proc.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]

    records = _records(resumed)
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    for record in records:
        want = expected[record["step"]]
        got = {k: record[k] for k in COMPARED}
        assert got == {k: want[k] for k in COMPARED}, f"step {record['step']} differs"
    print(f"killed at step {killed_at}, restarted from {restart_from}, SIGTERM at {stopped_at}")
