"""`python -m bertjax.serve` as a process: /health 503 until compiled, the persistent
compilation cache filled, 429 at once beyond --max_concurrent_requests, SIGTERM answers what is
in flight and exits cleanly."""

import concurrent.futures
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from serve_util import VOCAB, tiny_classifier

from bertjax import checkpointing
from bertjax.inference import manifest as manifest_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A classify run directory: run.json, vocab.txt and best/ params of a tiny classifier."""
    workdir = tmp_path_factory.mktemp("run")
    cfg, _, params = tiny_classifier(num_labels=2, max_positions=16)
    (workdir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    manifest_lib.write_manifest(
        workdir,
        {
            "format_version": 1,
            "task": "classify",
            "problem_type": "single_label",
            "label_names": ["negative", "positive"],
            "model": cfg.to_dict(),
            "tokenizer": {"type": "wordpiece", "vocab_file": "vocab.txt", "do_lower_case": True},
            "max_seq_length": 16,
            "data": {},
            "best_metric": "eval/accuracy",
            "init_from": "",
        },
    )
    best = checkpointing.BestCheckpointer(workdir, "eval/accuracy", "max")
    best.maybe_save(1, params, {"eval/accuracy": 1.0})
    best.close()
    return workdir


def _start(run_dir, cache_dir, *flags):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "bertjax.serve", f"--workdir={run_dir}", "--port=0",
           f"--compilation_cache_dir={cache_dir}", *flags]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 240
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line, re.IGNORECASE)
        if match:
            return proc, f"http://127.0.0.1:{match.group(1)}"
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines[-30:]))


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_health_backpressure_and_sigterm(run_dir, tmp_path):
    cache_dir = tmp_path / "jax_cache"
    proc, url = _start(
        run_dir,
        cache_dir,
        "--max_batch_size=4",
        "--max_batch_tokens=64",
        "--max_wait_ms=1500",  # a lone request waits for company: requests stay in flight
        "--max_concurrent_requests=2",
        "--max_client_batch_size=4",
    )
    try:
        health = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            health.append(httpx.get(f"{url}/health", timeout=5).status_code)
            if health[-1] == 200:
                break
            time.sleep(0.05)
        assert health[0] == 503 and health[-1] == 200, health
        assert any(cache_dir.iterdir()), "the persistent compilation cache stayed empty"

        # 2N clients against --max_concurrent_requests=N: the excess get 429 before the
        # admitted ones (held by --max_wait_ms) are answered; nothing fails with 5xx.
        def post(i):
            time.sleep(0.2 * (i >= 2))  # the first two are admitted first
            r = httpx.post(f"{url}/v1/predict", json={"inputs": "good movie"}, timeout=30)
            return r.status_code, time.monotonic(), r.headers.get("retry-after")

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(post, range(4)))
        statuses = sorted(s for s, _, _ in results)
        assert statuses == [200, 200, 429, 429], results
        last_429 = max(t for s, t, _ in results if s == 429)
        first_200 = min(t for s, t, _ in results if s == 200)
        assert last_429 < first_200, "429s must not wait for the admitted requests"
        assert all(ra == "1" for s, _, ra in results if s == 429)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200

        # SIGTERM while a request waits in the queue: it is answered, then the process exits.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post, f"{url}/v1/predict", json={"inputs": "bad plot"}, timeout=30
            )
            deadline = time.monotonic() + 30
            while "bertjax_requests_in_flight 1.0" not in httpx.get(f"{url}/metrics").text:
                assert time.monotonic() < deadline, "the request never reached the server"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200 and response.json()[0]["label"] in {
            "negative",
            "positive",
        }
        # uvicorn re-raises the signal once it has shut down, so the status says SIGTERM.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        err = proc.stderr.read()
        assert "Traceback" not in err and "Finished server process" in err, err
    finally:
        _stop(proc)


def test_bad_workdir_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "bertjax.serve", f"--workdir={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert str(tmp_path) in proc.stderr and "Traceback" not in proc.stderr


def test_the_package_does_not_import_ray():
    code = (
        "import sys, bertjax.serve.app, bertjax.serve.__main__, bertjax.serve.loading; "
        "assert 'ray' not in sys.modules, 'bertjax.serve imported ray'"
    )
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, cwd=REPO)


def test_ray_launcher_flags_match_the_server_cli():
    """launch/ray_serve.py takes every ServerSettings field (booleans as --x / --no-x, not
    type=bool, which reads "False" as true) and the GPT generation limits; parsing needs no
    Ray."""
    spec = importlib.util.spec_from_file_location(
        "ray_serve_launcher", os.path.join(REPO, "launch", "ray_serve.py")
    )
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    args = launcher.parse_args(["--workdir=w", "--no-pack_rows", "--max_batch_size=8",
                                "--max_new_tokens_limit=64", "--max_prompt_tokens=32"])  # fmt: skip
    assert args.pack_rows is False and args.max_batch_size == 8
    assert (args.max_new_tokens_limit, args.max_prompt_tokens) == (64, 32)
    assert launcher.parse_args(["--workdir=w"]).pack_rows is True
