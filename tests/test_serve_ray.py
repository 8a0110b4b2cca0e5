"""launch/ray_serve.py on a local Ray instance: one replica answers /v1/predict over HTTP.

Skipped where Ray Serve is not installed (it is an optional extra:
requirements-serve-ray.txt)."""

import importlib.util
import os
import socket

import httpx
import pytest

pytest.importorskip("ray.serve")

from serve_util import VOCAB, tiny_classifier  # noqa: E402

from bertjax import checkpointing  # noqa: E402
from bertjax.inference import manifest as manifest_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_launcher():
    spec = importlib.util.spec_from_file_location(
        "ray_serve_launcher", os.path.join(REPO, "launch", "ray_serve.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_serve_replica_answers_predict(tmp_path):
    import ray
    from ray import serve

    workdir = tmp_path / "run"
    workdir.mkdir()
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

    launcher = _load_launcher()
    port = _free_port()
    env = {"PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = launcher.build_application(
            str(workdir), {"max_batch_size": 2, "max_batch_tokens": 32}, num_replicas=1
        )
        serve.run(app, name="bertjax", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        r = httpx.post(f"{url}/v1/predict", json={"inputs": ["good movie", "bad"]}, timeout=60)
        assert r.status_code == 200, r.text
        assert [len(x) for x in r.json()] == [2, 2]
        bad = httpx.post(f"{url}/v1/predict", json={"inputs": 3}, timeout=60)
        assert bad.status_code == 422 and bad.json()["error_type"] == "validation"
    finally:
        serve.shutdown()
        ray.shutdown()
