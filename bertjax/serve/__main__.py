"""python -m bertjax.serve --workdir=DIR [--host 127.0.0.1 --port 8080]: serve a run over HTTP.

The server compiles every (batch, length) bucket (a GPT run: every prompt width and the decode
step) before /health answers 200 (set
--compilation_cache_dir to reuse compilations across restarts), then batches concurrent
requests under --max_batch_tokens / --max_batch_size. SIGTERM (or Ctrl-C) stops accepting
connections, answers what is in flight, then exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bertjax.serve", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="Run directory (run.json or glue_run.json).")
    p.add_argument(
        "--checkpoint", default="", help="Checkpoint to serve (default: the run's best)."
    )
    p.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")
    p.add_argument("--port", type=int, default=8080, help="Port (0: any free port).")
    p.add_argument(
        "--max_batch_tokens",
        type=int,
        default=4096,
        help="Token budget of a batch: rows x length bucket.",
    )
    p.add_argument("--max_batch_size", type=int, default=32, help="Rows per batch at most.")
    p.add_argument(
        "--max_wait_ms",
        type=float,
        default=0.0,
        help="Wait for more rows up to this long (0: never).",
    )
    p.add_argument(
        "--min_bucket_length",
        type=int,
        default=16,
        help="Shortest length bucket; packed row lengths step by multiples of it.",
    )
    p.add_argument(
        "--pack_rows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Classifiers and encoders: inputs share token rows instead of one padded row "
        "each (--no-pack_rows: pad).",
    )
    p.add_argument(
        "--max_concurrent_requests",
        type=int,
        default=512,
        help="Requests admitted at once; beyond it 429 with Retry-After.",
    )
    p.add_argument(
        "--max_client_batch_size",
        type=int,
        default=32,
        help="Inputs per request at most (413 beyond).",
    )
    p.add_argument(
        "--max_payload_bytes",
        type=int,
        default=1_000_000,
        help="Largest request body (413 beyond).",
    )
    p.add_argument(
        "--request_timeout_s",
        type=float,
        default=30.0,
        help="A request not answered by then gets 504.",
    )
    p.add_argument(
        "--graceful_shutdown_s",
        type=float,
        default=30.0,
        help="After SIGTERM, how long in-flight requests may take.",
    )
    p.add_argument(
        "--timeout_keep_alive",
        type=float,
        default=75.0,
        help="Seconds an idle keep-alive connection stays open (above clients').",
    )
    p.add_argument(
        "--compilation_cache_dir",
        default="",
        help="jax persistent compilation cache (reused across restarts).",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="Compute dtype to serve in instead of the run's.",
    )
    p.add_argument(
        "--max_new_tokens_limit",
        type=int,
        default=256,
        help="GPT runs: the most tokens a /v1/generate request may ask for.",
    )
    p.add_argument(
        "--max_prompt_tokens",
        type=int,
        default=None,
        help="GPT runs: the longest prompt in tokens (default: up to 256, what the model's "
        "positions leave after --max_new_tokens_limit). One prefill is compiled per 8 tokens.",
    )
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import jax
    import uvicorn

    if args.compilation_cache_dir:
        os.makedirs(args.compilation_cache_dir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache_dir)
        # Cache every bucket, however fast it compiled: start-up compiles them all.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

    from bertjax.serve.app import ServerSettings, create_app
    from bertjax.serve.loading import load_backend

    try:
        settings = ServerSettings(
            max_batch_tokens=args.max_batch_tokens,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            min_bucket_length=args.min_bucket_length,
            pack_rows=args.pack_rows,
            max_concurrent_requests=args.max_concurrent_requests,
            max_client_batch_size=args.max_client_batch_size,
            max_payload_bytes=args.max_payload_bytes,
            request_timeout_s=args.request_timeout_s,
        )
        backend = load_backend(
            args.workdir,
            args.checkpoint,
            args.dtype,
            max_new_tokens=args.max_new_tokens_limit,
            max_prompt_tokens=args.max_prompt_tokens,
        )
        app = create_app(backend, settings)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"bertjax.serve: {e}")
    # uvicorn handles SIGTERM/SIGINT: stop accepting, finish in-flight requests (up to
    # graceful_shutdown_s), then run the app's shutdown (drain the batcher) and exit.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_shutdown_s,
        timeout_keep_alive=args.timeout_keep_alive,
        access_log=False,
    )


if __name__ == "__main__":
    main()
