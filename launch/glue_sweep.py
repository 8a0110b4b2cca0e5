"""GLUE hyper-parameter sweep with the BERT paper's protocol, and its results table.

    python launch/glue_sweep.py --tasks=rte,mrpc,stsb,cola --init_from=/ckpt/bert_base \
        --out=runs/glue_sweep --seeds=0,1,2 --data_dir=glue_data --jobs=4 --devices=0,1,2,3

Runs `python -m bertjax.main --config=configs/glue.py:TASK` for every point of the grid
(learning rate 5e-5, 4e-5, 3e-5, 2e-5 x batch 16, 32 x epochs 2, 3, 4; BERT paper appendix A.3)
and every seed, `--jobs` at a time. With `--devices`, each job gets `--devices_per_job` of
them through `--device_env` (CUDA_VISIBLE_DEVICES by default); without, jobs share the host
(CPU). SQuAD and NER sweep the same way (`--tasks=squad` or `--tasks=ner`, configs/squad.py /
configs/ner.py, scored on eval/f1; pass their files with --config.data.train_file=... and
--config.data.validation_file=..., in a sweep of their own since the overrides go to every run).
A run that finished before (its DONE file exists) is not run again, so an interrupted
sweep is resumed by launching it again.

Selection, as the paper: for each task the setting whose dev score (the task's metric at the
end of training; `--score=best` takes the best epoch instead) has the highest median over the
seeds. Written to `--out`: results.md and results.csv (per task: the chosen setting, median and
mean ± std over seeds, the other metrics' medians), runs.csv (every run) and curves.png (the
training curves of every run, overlaid: `bertjax.plot`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bertjax.data import glue  # noqa: E402  (after sys.path: runnable as a plain script)

PAPER_LEARNING_RATES = (5e-5, 4e-5, 3e-5, 2e-5)
PAPER_BATCH_SIZES = (16, 32)
PAPER_EPOCHS = (2, 3, 4)
DONE_FILE = "DONE"
SPAN_TASKS = ("squad", "ner")  # their own config files; selected on eval/f1


def metric_key(task: str) -> str:
    """The dev metric a task's settings are ranked on."""
    if task in SPAN_TASKS:
        return "eval/f1"
    from bertjax.tasks import glue as glue_task

    return glue_task.best_metric_key(glue.get_task(task))


def config_arg(task: str) -> str:
    """The --config of a task: configs/glue.py:TASK, or configs/squad.py / configs/ner.py."""
    if task in SPAN_TASKS:
        return str(REPO / "configs" / f"{task}.py")
    return f"{REPO / 'configs' / 'glue.py'}:{task}"


@dataclasses.dataclass(frozen=True)
class Run:
    """One fine-tuning run of the sweep."""

    task: str
    learning_rate: float
    batch_size: int
    epochs: float
    seed: int
    workdir: pathlib.Path

    @property
    def setting(self) -> tuple[float, int, float]:
        return (self.learning_rate, self.batch_size, self.epochs)


def plan(
    tasks: Sequence[str],
    out: pathlib.Path,
    seeds: Sequence[int],
    learning_rates: Sequence[float] = PAPER_LEARNING_RATES,
    batch_sizes: Sequence[int] = PAPER_BATCH_SIZES,
    epochs: Sequence[float] = PAPER_EPOCHS,
) -> list[Run]:
    """Every (task, lr, batch, epochs, seed) of the grid, each with its own workdir."""
    runs = []
    for task in tasks:
        # an unknown task -> error listing the valid GLUE ones
        name = task if task in SPAN_TASKS else glue.get_task(task).name
        for lr, bs, ep, seed in itertools.product(learning_rates, batch_sizes, epochs, seeds):
            workdir = out / name / f"lr{lr:g}_bs{bs}_ep{ep:g}" / f"seed{seed}"
            runs.append(Run(name, float(lr), int(bs), float(ep), int(seed), workdir))
    return runs


def command(run: Run, init_from: str, extra: Sequence[str]) -> list[str]:
    """The bertjax.main command line of `run`."""
    return [
        sys.executable,
        "-m",
        "bertjax.main",
        f"--config={config_arg(run.task)}",
        f"--workdir={run.workdir}",
        f"--config.init_from={init_from}",
        f"--config.optim.learning_rate={run.learning_rate}",
        f"--config.batch_size={run.batch_size}",
        f"--config.num_train_epochs={run.epochs}",
        f"--config.seed={run.seed}",
        *extra,
    ]


def execute(
    runs: Sequence[Run],
    make_command: Callable[[Run], list[str]],
    jobs: int = 1,
    devices: Sequence[str] = (),
    devices_per_job: int = 1,
    device_env: str = "CUDA_VISIBLE_DEVICES",
    poll_seconds: float = 0.5,
) -> list[Run]:
    """Runs what is not DONE yet, `jobs` at a time; returns the runs that failed.

    With `devices`, there are len(devices) // devices_per_job slots (at most `jobs`), and each
    job sees only its slot's devices through `device_env`.
    """
    if devices:
        slots = [
            ",".join(devices[i : i + devices_per_job])
            for i in range(0, len(devices) - devices_per_job + 1, devices_per_job)
        ][: max(jobs, 1)]
        if not slots:
            raise ValueError(f"{len(devices)} device(s) cannot give {devices_per_job} per job")
    else:
        slots = [None] * max(jobs, 1)
    todo = [r for r in runs if not (r.workdir / DONE_FILE).exists()]
    print(
        f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to run", flush=True
    )
    free, running, failed = list(slots), [], []
    while todo or running:
        while todo and free:
            run, slot = todo.pop(0), free.pop(0)
            run.workdir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            if slot is not None:
                env[device_env] = slot
            log = open(run.workdir / "log.txt", "w")  # noqa: SIM115 (closed when it ends)
            proc = subprocess.Popen(
                make_command(run), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
            running.append((proc, run, slot, log, time.time()))
        time.sleep(poll_seconds if running else 0)
        for item in list(running):
            proc, run, slot, log, start = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            free.append(slot)
            took = time.time() - start
            if proc.returncode == 0:
                (run.workdir / DONE_FILE).write_text(f"{took:.1f}s\n")
                print(f"done   {run.workdir} ({took:.0f}s)", flush=True)
            else:
                failed.append(run)
                print(f"FAILED {run.workdir} (exit {proc.returncode}; see log.txt)", flush=True)
    return failed


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def read_scores(workdir: pathlib.Path, score: str = "final") -> dict[str, float]:
    """The dev metrics of a run from its metrics.jsonl: of the last eval, or of its best one."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (did the run start?)")
    evals = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        found = {k: v for k, v in record.items() if k.startswith("eval") and "/" in k}
        if found:
            evals.append(found)
    if not evals:
        raise ValueError(f"{path} has no eval records")
    if score == "final":
        return evals[-1]
    run_file = workdir / "run.json"  # bertjax.inference.manifest; older runs: glue_run.json
    if run_file.exists():
        key = json.loads(run_file.read_text())["best_metric"]
    else:
        task = json.loads((workdir / "glue_run.json").read_text())["task"]
        key = metric_key(task)
    return max(evals, key=lambda e: e[key])


def summarise(runs: Sequence[Run], score: str = "final") -> tuple[list[dict], list[dict]]:
    """(one row per task: chosen setting and seed statistics, one row per finished run)."""
    run_rows, by_setting = [], {}
    for run in runs:
        if not (run.workdir / DONE_FILE).exists():
            continue
        scores = read_scores(run.workdir, score)
        run_rows.append(
            {
                "task": run.task,
                "learning_rate": run.learning_rate,
                "batch_size": run.batch_size,
                "epochs": run.epochs,
                "seed": run.seed,
                **scores,
            }
        )
        by_setting.setdefault((run.task, run.setting), []).append(scores)
    task_rows = []
    for task in dict.fromkeys(r.task for r in runs):
        key = metric_key(task)
        settings = {s: v for (t, s), v in by_setting.items() if t == task}
        if not settings:
            continue

        def rank(item, key=key):
            values = [v[key] for v in item[1]]
            return (statistics.median(values), statistics.mean(values))

        (lr, bs, ep), results = max(settings.items(), key=rank)
        values = [r[key] for r in results]
        row = {
            "task": task,
            "metric": key,
            "learning_rate": lr,
            "batch_size": bs,
            "epochs": ep,
            "seeds": len(values),
            "median": statistics.median(values),
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": " ".join(f"{v:.4f}" for v in values),
        }
        for other in sorted({k for r in results for k in r} - {key}):
            if other.endswith("/loss"):
                continue
            row[f"median {other}"] = statistics.median(r[other] for r in results if other in r)
        task_rows.append(row)
    return task_rows, run_rows


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def markdown(task_rows: list[dict]) -> str:
    """The results table: per task the chosen setting and median, mean ± std over seeds."""
    lines = [
        "| task | metric | lr | batch | epochs | seeds | median | mean ± std "
        "| other metrics (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in task_rows:
        others = ", ".join(
            f"{k[len('median ') :]} {v:.4f}" for k, v in r.items() if k.startswith("median ")
        )
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['learning_rate']:g} | {r['batch_size']} | "
            f"{r['epochs']:g} | {r['seeds']} | {r['median']:.4f} | "
            f"{r['mean']:.4f} ± {r['std']:.4f} | {others} |"
        )
    return "\n".join(lines) + "\n"


def write_results(out: pathlib.Path, runs: Sequence[Run], score: str = "final") -> list[dict]:
    """Writes results.md, results.csv and runs.csv into `out`; returns the per-task rows."""
    task_rows, run_rows = summarise(runs, score)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "results.csv", task_rows)
    _write_csv(out / "runs.csv", run_rows)
    (out / "results.md").write_text(markdown(task_rows))
    plot_grid(out / "curves.png", runs)
    return task_rows


def plot_grid(path: pathlib.Path, runs: Sequence[Run]) -> None:
    """curves.png: the training curves of every run of the grid that logged metrics, overlaid
    (`bertjax.plot`), labelled by task, learning rate, batch size, epochs and seed."""
    from bertjax import plot

    logged = [r for r in runs if (r.workdir / plot.METRICS_FILE).is_file()]
    if not logged:
        return
    labels = [f"{r.task} lr={r.learning_rate:g} bs={r.batch_size} ep={r.epochs:g} s={r.seed}"
              for r in logged]  # fmt: skip
    plot.plot_runs([r.workdir for r in logged], path, labels, title="GLUE sweep")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", required=True, help="comma-separated GLUE tasks, squad, ner")
    parser.add_argument("--init_from", required=True, help="pretrained checkpoint (HF or bertjax)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="sweep directory")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--learning_rates", default=",".join(map(str, PAPER_LEARNING_RATES)))
    parser.add_argument("--batch_sizes", default=",".join(map(str, PAPER_BATCH_SIZES)))
    parser.add_argument("--epochs", default=",".join(map(str, PAPER_EPOCHS)))
    parser.add_argument("--data_dir", default="", help="GLUE TSV directory ('' = TFDS)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--devices", default="", help="device ids to share out, e.g. 0,1,2,3")
    parser.add_argument("--devices_per_job", type=int, default=1)
    parser.add_argument("--device_env", default="CUDA_VISIBLE_DEVICES")
    parser.add_argument("--score", choices=("final", "best"), default="final")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    parser.add_argument("--results_only", action="store_true", help="only rebuild the tables")
    # Any --config.KEY=VALUE is passed on to every run, e.g. --config.data.max_seq_length=64.
    args, overrides = parser.parse_known_args(argv)
    bad = [a for a in overrides if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {bad} (only --config.KEY=VALUE is passed on)")

    def floats(s: str) -> list[float]:
        return [float(x) for x in s.split(",") if x]

    runs = plan(
        args.tasks.split(","),
        args.out,
        [int(s) for s in args.seeds.split(",") if s],
        floats(args.learning_rates),
        [int(b) for b in args.batch_sizes.split(",") if b],
        floats(args.epochs),
    )
    extra = list(overrides)
    if args.data_dir:
        extra.append(f"--config.data.data_dir={args.data_dir}")

    def make_command(run: Run) -> list[str]:
        return command(run, args.init_from, extra)

    if args.dry_run:
        for run in runs:
            print(" ".join(make_command(run)))
        return 0
    failed = []
    if not args.results_only:
        devices = [d for d in args.devices.split(",") if d]
        failed = execute(
            runs, make_command, args.jobs, devices, args.devices_per_job, args.device_env
        )
    rows = write_results(args.out, runs, args.score)
    print(markdown(rows))
    if failed:
        print(f"{len(failed)} run(s) failed: {[str(r.workdir) for r in failed]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
