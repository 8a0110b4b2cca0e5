"""Training curves from metrics.jsonl: loss, task metrics, learning rate and throughput.

    python -m bertjax.plot --workdir=runs/a [runs/b ...] --output=curves.png

Several runs are overlaid (one colour per run, e.g. a sweep's grid); eval values (keys
`EVAL_SET/metric`) are drawn with markers. matplotlib with the Agg backend (no display).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from bertjax.data import jsonl

METRICS_FILE = "metrics.jsonl"
# Keys that are not curves worth a panel of their own.
SKIP = ("step", "eval/examples", "grad_norm", "param_norm", "steps_per_sec")
THROUGHPUT = ("examples_per_sec", "tokens_per_sec")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a file, or a run directory holding one).

    A malformed line is an error naming the file and line; every record needs an int "step".
    """
    path = pathlib.Path(path)
    if path.suffix != ".jsonl":  # a run directory
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the training loop writes {METRICS_FILE})")
    records = []
    for number, record in jsonl.read_objects(str(path)):
        if not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: expected an object with an int 'step'")
        records.append(record)
    return records


def panels(runs: Sequence[Sequence[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """[(title, keys)] for the runs: loss (train and eval), each task metric, the learning
    rate, throughput; keys absent from every run are left out."""
    keys: set[str] = set()
    for records in runs:
        for r in records:
            keys.update(k for k, v in r.items() if isinstance(v, (int, float)))
    keys -= set(SKIP)
    out: list[tuple[str, list[str]]] = []
    losses = sorted(k for k in keys if k == "loss" or k.endswith("/loss"))
    if losses:
        out.append(("loss", losses))
    # A task metric: its train value (if logged) and every eval set's, in one panel.
    base = {k.split("/", 1)[-1] for k in keys} - {"loss", "learning_rate", *THROUGHPUT}
    for name in sorted(base):
        out.append((name, sorted(k for k in keys if k == name or k.endswith("/" + name))))
    if "learning_rate" in keys:
        out.append(("learning rate", ["learning_rate"]))
    throughput = [k for k in THROUGHPUT if k in keys]
    if throughput:
        out.append(("throughput", throughput[:1]))
    return out


def plot_runs(
    workdirs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> list[str]:
    """Writes the curves of `workdirs` (overlaid) to `output` (PNG); returns the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_metrics(w) for w in workdirs]
    if labels is None:
        labels = [pathlib.Path(w).name or str(w) for w in workdirs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    layout = panels(runs)
    if not layout:
        raise ValueError(f"no numeric metrics in {[str(w) for w in workdirs]}")
    cols = min(3, len(layout))
    rows = math.ceil(len(layout) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, keys) in zip(axes.flat, layout, strict=False):
        for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
            for key in keys:
                points = [
                    (r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))
                ]
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                is_eval = "/" in key
                ax.plot(steps, values, color=colors[i % len(colors)],
                        marker="o" if is_eval else None, ms=3, lw=1.2,
                        ls="--" if is_eval and len(keys) > 1 else "-",
                        label=f"{label} {key}" if len(keys) > 1 or len(runs) == 1
                        else label)  # fmt: skip
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        handles = ax.get_legend_handles_labels()[0]
        if handles and len(handles) <= 12:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(layout) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return [name for name, _ in layout]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bertjax.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workdir", nargs="+", required=True, help="run directories (metrics.jsonl)")
    p.add_argument("--output", required=True, help="the PNG to write")
    p.add_argument("--labels", default="", help="comma-separated run names (default: dir names)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    try:
        names = plot_runs(args.workdir, args.output, labels, args.title)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    print(f"wrote {args.output}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
