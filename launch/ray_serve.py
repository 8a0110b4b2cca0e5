"""Serve a bertjax run with Ray Serve: N replicas of the same server, each batching on its own.

    pip install -r requirements-serve-ray.txt
    # a local Ray instance (started for you), 2 replicas behind Ray's HTTP proxy on :8000:
    python launch/ray_serve.py --workdir=runs/sst2 --num_replicas=2
    # on a cluster (`ray start --head` on one host, `ray start --address=HEAD:6379` on the
    # others), one replica per accelerator, autoscaled on queued requests:
    python launch/ray_serve.py --workdir=/shared/runs/sst2 --address=auto --host=0.0.0.0 \
        --autoscale --min_replicas=1 --max_replicas=8 --target_ongoing_requests=64 \
        --gpus_per_replica=1

Each replica runs `bertjax.serve.create_app` (the same dynamic batcher, bucket grid, limits
and metrics as `python -m bertjax.serve`) as the deployment's ASGI app, and finishes
compiling every bucket before Ray routes requests to it. The server keeps no state between
requests, so Ray may send any request to any replica. Autoscaling follows Ray Serve's
`target_ongoing_requests`: the requests queued at or running on a replica, i.e. its queue depth.
The workdir must be readable from every node (a shared file system or a copy on each).
Nothing in the `bertjax` package imports Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any


def build_application(
    workdir: str,
    settings: dict[str, Any] | None = None,
    *,
    num_replicas: int = 1,
    autoscaling: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    checkpoint: str = "",
    backend_options: dict[str, Any] | None = None,
) -> Any:
    """The Ray Serve application of a run directory (bind-ready; pass it to `serve.run`).

    settings: `bertjax.serve.app.ServerSettings` fields. autoscaling: Ray Serve's
    autoscaling_config (replaces num_replicas), e.g. {"min_replicas": 1, "max_replicas": 4,
    "target_ongoing_requests": 64}. backend_options: `bertjax.serve.loading.load_backend`'s
    keyword arguments (dtype, a GPT run's max_new_tokens / max_prompt_tokens).
    """
    from ray import serve

    from bertjax.serve.app import ServerSettings

    server_settings = ServerSettings(**(settings or {}))

    def build_asgi_app():
        # Runs in each replica's process: load, then compile every bucket during start-up.
        from bertjax.serve.app import create_app
        from bertjax.serve.loading import load_backend

        backend = load_backend(workdir, checkpoint, **(backend_options or {}))
        return create_app(backend, server_settings, ready_before_serving=True)

    @serve.ingress(build_asgi_app)
    class BertjaxReplica:
        """One bertjax server; Ray's proxy sends it HTTP requests."""

    options: dict[str, Any] = {
        "name": "bertjax",
        # Ray's own per-replica admission: above the server's so that the server's 429 applies.
        "max_ongoing_requests": server_settings.max_concurrent_requests + 1,
        "ray_actor_options": ray_actor_options or {"num_cpus": 1},
    }
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = num_replicas
    return serve.deployment(**options)(BertjaxReplica).bind()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The launcher's flags: Ray's, then every `ServerSettings` field and the backend's
    options under the names `python -m bertjax.serve` gives them."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="")
    p.add_argument("--address", default=None, help="Ray cluster ('auto'); default: start one.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num_replicas", type=int, default=1)
    p.add_argument("--autoscale", action="store_true")
    p.add_argument("--min_replicas", type=int, default=1)
    p.add_argument("--max_replicas", type=int, default=4)
    p.add_argument("--target_ongoing_requests", type=float, default=64)
    p.add_argument("--cpus_per_replica", type=float, default=1)
    p.add_argument("--gpus_per_replica", type=float, default=0)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--max_new_tokens_limit", type=int, default=256, help="GPT runs.")
    p.add_argument("--max_prompt_tokens", type=int, default=None, help="GPT runs.")
    from bertjax.serve.app import ServerSettings

    for field in dataclasses.fields(ServerSettings):
        if isinstance(field.default, bool):  # type=bool would read "--x=False" as True
            p.add_argument(
                f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default
            )
        else:
            p.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    import ray
    from ray import serve

    from bertjax.serve.app import ServerSettings

    ray.init(address=args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerSettings)}
    autoscaling = None
    if args.autoscale:
        autoscaling = {
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        }
    app = build_application(
        args.workdir,
        settings,
        num_replicas=args.num_replicas,
        autoscaling=autoscaling,
        ray_actor_options={"num_cpus": args.cpus_per_replica, "num_gpus": args.gpus_per_replica},
        checkpoint=args.checkpoint,
        backend_options={
            "dtype": args.dtype,
            "max_new_tokens": args.max_new_tokens_limit,
            "max_prompt_tokens": args.max_prompt_tokens,
        },
    )
    serve.run(app, name="bertjax", route_prefix="/")
    print(f"serving {args.workdir} on http://{args.host}:{args.port} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


if __name__ == "__main__":
    main()
