"""Two processes on localhost (2 CPU devices each) train like one process with 4 devices.

The 2-process job runs through `launch/local_multiprocess.py` and `bertjax.main`, with
`jax.distributed` on 127.0.0.1. Each of its processes reads its own shard of the data, so the
1-process reference builds both hosts' pipelines and puts their rows side by side: the same
global batches. Losses, gradient norms and the eval metrics (gathered from both processes) must
match. Then the 2-process job loses its last checkpoint and restarts: it restores step 2 (each
process its own data position) and logs the same steps 3 and 4 again.
"""

import dataclasses
import shutil

import jax
import numpy as np
import pytest
from launch_util import CONFIG, TWO_PROCESS_OVERRIDES, read_metrics, run_two_processes

from bertjax import config_lib, tasks, train
from bertjax.tasks import bert_pretrain
from bertjax.tasks.base import HostInfo, TaskData

pytestmark = pytest.mark.slow


class _SideBySide:
    """One iterator whose batches are host 0's rows then host 1's rows."""

    def __init__(self, iterators):
        self.iterators = iterators

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self):
        return {str(i): it.get_state() for i, it in enumerate(self.iterators)}

    def set_state(self, state):
        for i, it in enumerate(self.iterators):
            it.set_state(state[str(i)])


def _two_hosts_in_one(config, host: HostInfo) -> TaskData:
    """bert_pretrain's data for hosts 0 and 1 of 2, served together by this one process."""
    hosts = [
        bert_pretrain.build_data(
            config,
            dataclasses.replace(
                host, process_index=i, process_count=2, local_batch_size=host.local_batch_size // 2
            ),
        )
        for i in range(2)
    ]
    return TaskData(
        train=_SideBySide([h.train for h in hosts]),
        eval_sets=lambda: {
            "eval": _SideBySide([iter(h.eval_sets()["eval"]) for h in hosts]),
        },
        vocab_size=hosts[0].vocab_size,
    )


def test_two_processes_give_the_losses_of_one_with_four_devices(
    tmp_path, two_process_job, subprocess_compile_cache
):
    # The job (the `two_process_job` fixture) also serves tests/test_faults_topology.py: a copy
    # is restarted here.
    job_dir, output = two_process_job
    assert "(2 processes)" in output
    two = tmp_path / "two_processes"
    shutil.copytree(job_dir, two)
    got = read_metrics(two)

    tasks.register(
        dataclasses.replace(
            bert_pretrain.TASK, name="two_hosts_in_one", build_data=_two_hosts_in_one
        )
    )
    config = config_lib.load(CONFIG, {**TWO_PROCESS_OVERRIDES, "task": "two_hosts_in_one"})
    want = train.run(config, tmp_path / "one_process", devices=jax.devices()[:4]).records

    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "param_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-5), (g["step"], key)
    for key in ("eval/loss", "eval/mlm_accuracy", "eval/nsp_accuracy", "eval/examples"):
        assert got[-1][key] == pytest.approx(want[-1][key], rel=1e-5), key
    assert got[-1]["eval/examples"] == 2 * 8  # both processes' eval rows were gathered
    # Both processes wrote their data position into the final checkpoint.
    data_dir = two / "checkpoints" / "4" / "data"
    assert sorted(p.name for p in data_dir.glob("process_*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]

    # A crash after step 2's checkpoint: the restart restores it in both processes and repeats
    # steps 3 and 4 exactly.
    shutil.rmtree(two / "checkpoints" / "4")
    # Process 0 of the restart takes the job's programs from the compilation cache (JAX
    # keys its entries per process and writes process 0's only), leaving process 1 a core.
    restart = run_two_processes(two, TWO_PROCESS_OVERRIDES, cache_dir=subprocess_compile_cache)
    assert restart.stdout.count("resumed from") + restart.stderr.count("resumed from") == 2
    again = read_metrics(two)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for g, a in zip(got, again, strict=True):
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "param_norm", "learning_rate"):
            assert a[key] == pytest.approx(g[key], rel=1e-6), (g["step"], key)
    assert again[-1]["eval/loss"] == pytest.approx(got[-1]["eval/loss"], rel=1e-6)
