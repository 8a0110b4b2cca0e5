"""The baseline the load test compares against: a classifier served the way most users would.

FastAPI + transformers, one forward pass per request (no batching across requests), a sync
endpoint (FastAPI runs it on its thread pool), PyTorch on the CPU with its default intra-op
threads. It answers POST /v1/predict with the same request and response shapes as
`bertjax.serve` (a text or a list of texts -> label/score lists), and GET /health.

    python benchmarks/hf_baseline_server.py --model_dir=/tmp/hf_sst2 --port=8081

`--model_dir` is a Hugging Face directory (config.json, model.safetensors, tokenizer files), e.g.
written from a bertjax run by `benchmarks/serve_load.py` through `bertjax.convert.to_hf`.
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class PredictRequest(BaseModel):
    inputs: str | list[str]
    truncate: bool = True


def build_app(model_dir: str, max_length: int) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(body: PredictRequest):
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        encoded = tokenizer(
            texts, padding=True, truncation=body.truncate, max_length=max_length,
            return_tensors="pt",
        )  # fmt: skip
        with torch.inference_mode():
            probs = model(**encoded).logits.softmax(-1)
        out = [
            sorted(
                ({"label": labels[j], "score": float(p[j])} for j in range(len(labels))),
                key=lambda s: -s["score"],
            )
            for p in probs
        ]
        return out[0] if isinstance(body.inputs, str) else out

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    app = build_app(args.model_dir, args.max_length)
    # info: the load test reads the "Uvicorn running on" line for the port.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
