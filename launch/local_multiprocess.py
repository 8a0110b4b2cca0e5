"""Starts N cooperating bertjax processes on this machine (a multi-host job in miniature).

    python launch/local_multiprocess.py --num_processes=2 --devices_per_process=2 -- \\
        --config=configs/bert_tiny_pretrain.py --workdir=/tmp/bert_2proc

Everything after ``--`` goes to ``python -m bertjax.main``. Each process gets
``--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I`` (a free port is
picked), and on CPU ``--xla_force_host_platform_device_count=devices_per_process``, so the job
sees N x devices_per_process devices, as N hosts would. Output lines are prefixed with
``[I]``. If one process fails the others are stopped; the exit code is the first non-zero one.
SIGTERM / SIGINT are forwarded to every process (a preemption drill).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(index: int, stream, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{index}] {line}")
        out.flush()


def launch(
    num_processes: int,
    main_args: list[str],
    *,
    devices_per_process: int | None = None,
    port: int | None = None,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
) -> int:
    """Runs the processes to completion; returns 0 or the first non-zero exit code."""
    port = port or free_port()
    base_env = dict(os.environ if env is None else env)
    if devices_per_process:
        flags = base_env.get("XLA_FLAGS", "")
        flags = " ".join(f for f in flags.split() if "host_platform_device_count" not in f)
        base_env["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
        )
    procs: list[subprocess.Popen] = []
    for index in range(num_processes):
        cmd = [
            python,
            "-m",
            "bertjax.main",
            *main_args,
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={num_processes}",
            f"--process_id={index}",
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env=base_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    pumps = [
        threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True)
        for i, p in enumerate(procs)
    ]
    for t in pumps:
        t.start()

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = 0
        remaining = set(range(num_processes))
        while remaining:
            for i in sorted(remaining):
                try:
                    rc = procs[i].wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                remaining.discard(i)
                if rc != 0 and code == 0:
                    code = rc
                    print(f"process {i} exited with {rc}; stopping the others", flush=True)
                    for j in remaining:
                        procs[j].terminate()
        for t in pumps:
            t.join(timeout=5)
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument(
        "--devices_per_process", type=int, default=None, help="fake CPU devices per process"
    )
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then bertjax.main flags")
    args = parser.parse_args()
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    sys.exit(
        launch(
            args.num_processes,
            main_args,
            devices_per_process=args.devices_per_process,
            port=args.port,
        )
    )


if __name__ == "__main__":
    main()
