"""Load test of prediction servers: fixed concurrency and fixed arrival rate, side by side.

    # bertjax (batched, inputs packed into token rows), bertjax batched with padded rows
    # (--no-padded skips it), bertjax with batching off, and FastAPI + transformers on the
    # same weights (converted with bertjax.convert.to_hf), alternated in rounds:
    python benchmarks/serve_load.py --workdir=runs/sst2 \
        --sentences=../shared/data/glue/SST-2/dev.tsv --concurrency=16 --rate=40 --rounds=3

    # an already running server:
    python benchmarks/serve_load.py --url=http://127.0.0.1:8080 --sentences=dev.tsv

    # overload: --max_concurrent_requests=N with 2N clients (429 latency, 5xx, recovery):
    python benchmarks/serve_load.py --workdir=runs/sst2 --sentences=dev.tsv --scenario=overload

Texts are the sentences of a real dev set (first TSV column after the header, or the
`sentence` column), drawn in a fixed random order. Each contender runs in its own process on
127.0.0.1; they are started once and measured in alternation (round 1: A B C, round 2: A B C,
...), and the table gives the median over rounds of req/s (2xx answers per second), latency
p50/p90/p99 and the responses by status. For the bertjax server it also reads /metrics: the
Prometheus request counter (which must equal the requests sent) and the mean batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

import httpx
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_sentences(path: str) -> list[str]:
    """The text column of a TSV with a header (`sentence` if present, else the first)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if len(rows) < 2:
        raise ValueError(f"{path}: no rows after the header")
    column = rows[0].index("sentence") if "sentence" in rows[0] else 0
    return [r[column] for r in rows[1:] if len(r) > column and r[column].strip()]


# ---------------------------------------------------------------------------------------------
# Load generation
# ---------------------------------------------------------------------------------------------


class Recorder:
    """Latencies and statuses of one measurement."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self.error_latencies: dict[int, list[float]] = collections.defaultdict(list)

    @property
    def count(self) -> int:
        """Responses of any status (at least 1, to divide by)."""
        return max(1, sum(self.statuses.values()))

    def add(self, status: int, latency: float) -> None:
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.latencies.append(latency)
        else:
            self.error_latencies[status].append(latency)


async def _post(client: httpx.AsyncClient, text: str, rec: Recorder, start: float) -> float:
    """Sends one request and records it; returns the Retry-After of a 429 (0 otherwise)."""
    retry_after = 0.0
    try:
        r = await client.post("/v1/predict", json={"inputs": text, "truncate": True})
        status = r.status_code
        if status == 429:
            retry_after = float(r.headers.get("retry-after", 0))
    except httpx.HTTPError:
        status = 0  # connection error / timeout
    rec.add(status, time.perf_counter() - start)
    return retry_after


class RawConnection:
    """One keep-alive HTTP/1.1 connection that speaks just what these requests need (a JSON
    POST; a response with Content-Length, as uvicorn sends for JSON), for a load client that
    costs the shared cores less CPU per request than httpx's (`--client=raw`)."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict) -> tuple[int, dict[str, str]]:
        """(status, lower-cased headers) of one POST; the body is read and dropped."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status = int((await self.reader.readline()).split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _post_raw(conn: RawConnection, text: str, rec: Recorder, start: float) -> float:
    """`_post` over a RawConnection."""
    retry_after = 0.0
    try:
        status, headers = await conn.post("/v1/predict", {"inputs": text, "truncate": True})
        if status == 429:
            retry_after = float(headers.get("retry-after", 0))
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        status = 0  # connection error or a malformed answer
        await conn.close()
    rec.add(status, time.perf_counter() - start)
    return retry_after


async def fixed_concurrency(
    url: str,
    texts: list[str],
    clients: int,
    seconds: float,
    honour_retry_after: bool = False,
    client: str = "httpx",
) -> tuple:
    """`clients` closed-loop clients for `seconds`; returns (Recorder, elapsed). A client that
    gets a 429 retries at once, or after the Retry-After it was given (`honour_retry_after`).
    client: "httpx" (an AsyncClient with a connection pool) or "raw" (a RawConnection each)."""
    rec = Recorder()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as pool:
        start = time.perf_counter()
        stop = start + seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            conn = RawConnection(url) if client == "raw" else None
            while time.perf_counter() < stop:
                i = next(counter)
                text, sent = texts[i % len(texts)], time.perf_counter()
                if conn is None:
                    wait = await _post(pool, text, rec, sent)
                else:
                    wait = await _post_raw(conn, text, rec, sent)
                if honour_retry_after and wait:
                    await asyncio.sleep(min(wait, stop - time.perf_counter()))
            if conn is not None:
                await conn.close()

        await asyncio.gather(*(worker() for _ in range(clients)))
        return rec, time.perf_counter() - start


async def fixed_rate(url: str, texts: list[str], rate: float, seconds: float) -> tuple:
    """Open loop: a request every 1/rate seconds for `seconds`, whatever the answers' pace;
    latency counts from the scheduled send time. Returns (Recorder, elapsed)."""
    rec = Recorder()
    limits = httpx.Limits(max_connections=1000)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_post(client, texts[i % len(texts)], rec, due)))
        await asyncio.gather(*tasks)
        return rec, time.perf_counter() - start


def summarise(rec: Recorder, elapsed: float) -> dict:
    lat = np.array(rec.latencies) * 1e3 if rec.latencies else np.array([np.nan])
    return {
        "req_s": len(rec.latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "statuses": dict(sorted(rec.statuses.items())),
    }


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) each group of a process's threads has used so far, by
    thread name with digits dropped ("python", "bertjax-model_", "asyncio_", XLA's pools...).

    On a shared machine CPU time per request is a steadier figure than requests per second:
    it counts what a request costs, not what share of the cores the process got."""
    tick = os.sysconf("SC_CLK_TCK")
    out: collections.Counter = collections.Counter()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            name = re.sub(r"\d+$", "", (task / "comm").read_text().strip())
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[name] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return dict(out)


@contextlib.contextmanager
def server_process(name: str, cmd: list[str], env: dict, log_dir: pathlib.Path):
    """Starts a server on port 0, yields (URL, pid) once /health is 200, always stops it."""
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        url = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if url is None:
                m = re.search(r"running on (http://127\.0\.0\.1:\d+)", log_path.read_text())
                url = m.group(1) if m else None
            if url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{name} did not start; see {log_path}:\n{log_path.read_text()}")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def export_hf(workdir: str, out_dir: pathlib.Path) -> pathlib.Path:
    """The run's weights and vocabulary as a Hugging Face directory (bertjax.convert.to_hf)."""
    from transformers import BertTokenizer

    from bertjax.convert import to_hf
    from bertjax.inference import load_run

    run = load_run(workdir)
    to_hf(run.model_config, run.params, out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    if run.label_names:
        config["id2label"] = dict(enumerate(run.label_names))
        config["label2id"] = {n: i for i, n in enumerate(run.label_names)}
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    vocab = out_dir / "vocab.txt"
    vocab.write_text("\n".join(run.tokenizer.vocab) + "\n")
    BertTokenizer(vocab=str(vocab), do_lower_case=run.tokenizer.do_lower_case).save_pretrained(
        out_dir
    )
    return out_dir


def bertjax_cmd(args, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bertjax.serve",
        f"--workdir={args.workdir}",
        "--port=0",
        f"--compilation_cache_dir={args.cache_dir}",
        *flags,
    ]


def read_metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith('bertjax_requests_total{route="/v1/predict",status="200"}'):
            out["predict_200"] = float(line.rsplit(" ", 1)[1])
        for key in ("bertjax_batch_size_sum", "bertjax_batch_size_count"):
            if line.startswith(key + " "):
                out[key] = float(line.rsplit(" ", 1)[1])
    return out


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


def compare(args, texts: list[str], log_dir: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    batched = [
        f"--max_batch_size={args.max_batch_size}",
        f"--max_batch_tokens={args.max_batch_tokens}",
    ]
    contenders = {"bertjax": bertjax_cmd(args, *batched)}
    if args.padded:  # the same batcher with one padded row per input: what packing gains
        contenders["bertjax-padded"] = bertjax_cmd(args, *batched, "--no-pack_rows")
    contenders["bertjax-unbatched"] = bertjax_cmd(
        args, "--max_batch_size=1", "--max_batch_tokens=512", "--no-pack_rows"
    )
    if not args.no_baseline:
        hf_dir = export_hf(args.workdir, log_dir / "hf_model")
        contenders["transformers"] = [
            sys.executable,
            str(REPO / "benchmarks/hf_baseline_server.py"),
            f"--model_dir={hf_dir}",
            "--port=0",
        ]
    with contextlib.ExitStack() as stack:
        urls, pids = {}, {}
        for name, cmd in contenders.items():
            urls[name], pids[name] = stack.enter_context(server_process(name, cmd, env, log_dir))
            print(f"# {name} ready at {urls[name]}", flush=True)
        check_agreement(urls, texts[:32])
        results: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        for rnd in range(args.rounds):
            for name, url in urls.items():
                asyncio.run(fixed_concurrency(url, texts, 4, 1.0))  # warm connections
                before = read_metrics(url) if name.startswith("bertjax") else {}
                cpu_before, client_before = thread_cpu_seconds(pids[name]), time.process_time()
                rec, elapsed = asyncio.run(
                    fixed_concurrency(
                        url, texts, args.concurrency, args.seconds, client=args.client
                    )
                )
                row = summarise(rec, elapsed)
                row["client_cpu_ms"] = (time.process_time() - client_before) * 1e3 / rec.count
                cpu_after = thread_cpu_seconds(pids[name])
                row["server_cpu_ms"] = {  # per answered request, by thread group
                    k: round((v - cpu_before.get(k, 0.0)) * 1e3 / rec.count, 2)
                    for k, v in sorted(cpu_after.items())
                    if v > cpu_before.get(k, 0.0)
                }
                if before:
                    after = read_metrics(url)
                    row["counter_delta"] = after["predict_200"] - before["predict_200"]
                    row["sent_2xx"] = len(rec.latencies)
                    row["mean_batch"] = (
                        after["bertjax_batch_size_sum"] - before["bertjax_batch_size_sum"]
                    ) / max(
                        1, after["bertjax_batch_size_count"] - before["bertjax_batch_size_count"]
                    )
                results[(name, f"{args.concurrency} clients")].append(row)
                print(f"round {rnd + 1} {name} concurrency: {json.dumps(row)}", flush=True)
                if args.rate > 0:
                    rec, elapsed = asyncio.run(fixed_rate(url, texts, args.rate, args.seconds))
                    row = summarise(rec, elapsed)
                    results[(name, f"{args.rate:g} req/s offered")].append(row)
                    print(f"round {rnd + 1} {name} rate: {json.dumps(row)}", flush=True)
        print_table(results)


def check_agreement(urls: dict[str, str], texts: list[str]) -> None:
    """The contenders serve the same model: the top label and its score agree on every text,
    sent one per request and all in one request (which a packing server packs together)."""
    answers = {}
    for name, u in urls.items():
        alone = [
            httpx.post(f"{u}/v1/predict", json={"inputs": t}, timeout=60).json() for t in texts
        ]
        together = httpx.post(f"{u}/v1/predict", json={"inputs": texts}, timeout=60).json()
        answers[f"{name}"], answers[f"{name} (one request)"] = alone, together
    names = list(answers)
    worst = 0.0
    for i in range(len(texts)):
        ref = answers[names[0]][i][0]
        for other in names[1:]:
            got = answers[other][i][0]
            if got["label"] != ref["label"] and abs(got["score"] - 0.5) > 1e-3:
                raise AssertionError(f"{names[0]} and {other} disagree on {texts[i]!r}")
            worst = max(worst, abs(got["score"] - ref["score"]))
    print(
        f"# the {len(urls)} servers agree on {len(texts)} texts, one per request and all in one "
        f"(max |score diff| {worst:.2e})"
    )


def print_table(results: dict) -> None:
    print(
        "\n| server | load | req/s | p50 ms | p90 ms | p99 ms | responses | mean batch "
        "| server CPU ms/req | client CPU ms/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, load), rows in results.items():
        med = {
            k: statistics.median(r[k] for r in rows)
            for k in ("req_s", "p50_ms", "p90_ms", "p99_ms")
        }
        statuses = collections.Counter()
        for r in rows:
            statuses.update({int(k): v for k, v in r["statuses"].items()})
        batch = (
            statistics.median(r["mean_batch"] for r in rows) if "mean_batch" in rows[0] else None
        )
        batch_text = "" if batch is None else f"{batch:.2f}"
        cpu = ["", ""]
        if "server_cpu_ms" in rows[0]:
            cpu = [
                f"{statistics.median(sum(r['server_cpu_ms'].values()) for r in rows):.1f}",
                f"{statistics.median(r['client_cpu_ms'] for r in rows):.1f}",
            ]
        print(
            f"| {name} | {load} | {med['req_s']:.1f} | {med['p50_ms']:.1f} | "
            f"{med['p90_ms']:.1f} | {med['p99_ms']:.1f} | {dict(statuses)} | {batch_text} "
            f"| {cpu[0]} | {cpu[1]} |"
        )

    def medians(server: str) -> dict[str, float]:
        return {
            load: statistics.median(r["req_s"] for r in rows)
            for (name, load), rows in results.items()
            if name == server
        }

    others = {
        "transformers": medians("transformers"),
        "padded rows": medians("bertjax-padded"),
        "unbatched": medians("bertjax-unbatched"),
    }
    for load, ours in medians("bertjax").items():
        parts = [f"{ours / by[load]:.2f}x {n}" for n, by in others.items() if load in by]
        print(f"# bertjax throughput at {load}: " + ", ".join(parts))


def overload(args, texts: list[str], log_dir: pathlib.Path) -> None:
    """--max_concurrent_requests=N, 2N closed-loop clients: 429 latency, 5xx, /health after."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    n = args.overload_limit
    cmd = bertjax_cmd(
        args,
        f"--max_batch_size={args.max_batch_size}",
        f"--max_batch_tokens={args.max_batch_tokens}",
        f"--max_concurrent_requests={n}",
    )
    print(f"# --max_concurrent_requests={n}, {2 * n} clients for {args.seconds:g}s each")
    with server_process("bertjax-overload", cmd, env, log_dir) as (url, _):
        # Clients that retry a 429 at once (a flood: the worst case), then clients that wait
        # the Retry-After they are given, as well-behaved HTTP clients do.
        for honour, behaviour in ((False, "retry at once"), (True, "honour Retry-After")):
            rec, elapsed = asyncio.run(
                fixed_concurrency(
                    url, texts, 2 * n, args.seconds, honour_retry_after=honour, client=args.client
                )
            )
            stopped = time.perf_counter()
            while httpx.get(f"{url}/health", timeout=5).status_code != 200:
                time.sleep(0.01)
            recovered_ms = (time.perf_counter() - stopped) * 1e3
            row = summarise(rec, elapsed)
            lat429 = np.array(rec.error_latencies.get(429, [np.nan])) * 1e3
            print(f"## clients {behaviour}")
            print(
                f"responses: {row['statuses']}; 2xx req/s {row['req_s']:.1f}, "
                f"p99 {row['p99_ms']:.1f} ms"
            )
            print(
                f"429 latency: p50 {np.percentile(lat429, 50):.1f} ms, p99 "
                f"{np.percentile(lat429, 99):.1f} ms, max {np.max(lat429):.1f} ms"
            )
            print(
                f"5xx: {sum(v for k, v in rec.statuses.items() if k >= 500 or k == 0)}; "
                f"/health 200 {recovered_ms:.0f} ms after the load stopped"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sentences", required=True, help="TSV whose sentences are the requests.")
    p.add_argument("--workdir", help="bertjax run directory to serve (the servers are started).")
    p.add_argument("--url", help="Drive this running server instead of starting any.")
    p.add_argument("--scenario", default="compare", choices=["compare", "overload"])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.0, help="Fixed arrival rate (0: skip).")
    p.add_argument("--seconds", type=float, default=20.0, help="Length of each measurement.")
    p.add_argument(
        "--client",
        default="httpx",
        choices=["httpx", "raw"],
        help="Closed-loop clients: httpx's AsyncClient, or one raw keep-alive HTTP/1.1 "
        "connection each (less client CPU on the machine the servers share).",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max_batch_size", type=int, default=32)
    p.add_argument("--max_batch_tokens", type=int, default=2048)
    p.add_argument("--overload_limit", type=int, default=8)
    p.add_argument("--no_baseline", action="store_true", help="Skip the transformers server.")
    p.add_argument(
        "--padded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also run bertjax batching with padded rows (--no-pack_rows) beside packed ones.",
    )
    p.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "bertjax_jax_cache"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    # SIGTERM runs the finally blocks too, so that the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    texts = read_sentences(args.sentences)
    np.random.default_rng(args.seed).shuffle(texts)
    print(f"# {len(texts)} sentences from {args.sentences}; {os.cpu_count()} CPUs")
    if args.url:
        for mode in ("concurrency", "rate"):
            if mode == "rate" and args.rate <= 0:
                continue
            run = (
                fixed_concurrency(
                    args.url, texts, args.concurrency, args.seconds, client=args.client
                )
                if mode == "concurrency"
                else fixed_rate(args.url, texts, args.rate, args.seconds)
            )
            print(mode, json.dumps(summarise(*asyncio.run(run))))
        return
    if not args.workdir:
        p.error("give --workdir (servers started here) or --url")
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="serve_load_"))
    try:
        (compare if args.scenario == "compare" else overload)(args, texts, log_dir)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
