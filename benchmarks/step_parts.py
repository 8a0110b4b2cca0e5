"""Where bertjax's fine-tuning step spends its time: the step with parts switched off.

    python benchmarks/step_parts.py [--data_dir=DIR] [--length=64] [--rounds=3] [--steps=4]

bertjax's real jitted train step on configs/glue.py:sst2 (padded rows, kernels "xla", float32), as
`glue_vs_transformers.py --step_speed` builds it, in four forms: as configured (dropout 0.1,
global-norm clipping 1.0), without any dropout, without attention dropout, without clipping;
and transformers' plain-loop step as the reference. The contenders alternate, `--rounds`
rounds of `--steps` steps each, and the medians and ratios to transformers are printed as a
Markdown table. A part whose removal does not speed the step up is not where time is lost.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import glue_vs_transformers  # noqa: E402

from bertjax import config_lib  # noqa: E402

VARIANTS = {
    "full (dropout 0.1, clipping 1.0)": {},
    "no dropout": {"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0},
    "no attention dropout": {"model.attention_dropout": 0.0},
    "no clipping": {"optim.grad_clip_norm": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    args.task, args.warmup = "sst2", 2

    load = config_lib.load
    steppers = []
    try:
        for name, extra in VARIANTS.items():
            # The stepper loads configs/glue.py itself; add this variant's overrides to its own.
            def load_variant(path, overrides, extra=extra):
                return load(path, {**overrides, "model.kernels": "xla", **extra})

            config_lib.load = load_variant
            step, _ = glue_vs_transformers._bertjax_stepper(args, args.length, pack=False)
            steppers.append((step, f"bertjax, {name}"))
    finally:
        config_lib.load = load
    steppers.append(glue_vs_transformers._torch_stepper(args, args.length, dynamic=False))

    rates = glue_vs_transformers.alternate(steppers, args.rounds, args.steps, args.warmup)
    base = statistics.median(rates[steppers[-1][1]])
    print("| step | steps/s (median) | rounds | ratio to transformers |\n|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {median:.3f} | {rounds} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
