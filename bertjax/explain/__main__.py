"""python -m bertjax.explain --workdir=DIR --text="..." [--text_pair=...] [--target=LABEL]
    [--method=integrated_gradients|grad_x_input|grad_norm|occlusion] --output=OUT

OUT's extension picks the format: .json (the schema of docs/explain.md), .html (a
self-contained page) or .png (heatmaps); several outputs may be given comma-separated.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from bertjax.explain import attributions, explainer, render, targets

FORMATS = (".json", ".html", ".png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bertjax.explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workdir", required=True, help="a bertjax run directory (run.json)")
    p.add_argument("--checkpoint", default="", help="step number or path ('' = best/latest)")
    p.add_argument("--text", required=True)
    p.add_argument("--text_pair", default=None, help="second text of a pair (BERT runs)")
    p.add_argument("--target", default=None,
                   help="label (classifier), token (MLM at [MASK], GPT next token); "
                        "default: the prediction")  # fmt: skip
    p.add_argument("--method", default="integrated_gradients", choices=attributions.METHODS)
    p.add_argument("--steps", type=int, default=64, help="integrated gradients' points")
    p.add_argument("--rule", default="gauss_legendre", choices=attributions.RULES)
    p.add_argument("--baseline", default="pad", choices=explainer.BASELINES)
    p.add_argument("--score", default="logit", choices=targets.CLASS_SCORES,
                   help="which score of the target class is explained (classifiers)")  # fmt: skip
    p.add_argument("--float64", action="store_true", help="evaluate the model in float64")
    p.add_argument("--layer", type=int, default=None, help="PNG: attention layer (default last)")
    p.add_argument("--output", required=True, help="OUT.json, OUT.html, OUT.png (comma-separated)")
    args = p.parse_args(argv)
    for out in args.output.split(","):
        if pathlib.Path(out).suffix not in FORMATS:
            p.error(f"--output={out}: the extension must be one of {list(FORMATS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    from bertjax.inference import load_run

    run = load_run(args.workdir, args.checkpoint, dtype="float32")
    result = explainer.explain(
        run, args.text, args.text_pair, target=args.target, method=args.method,
        steps=args.steps, rule=args.rule, baseline=args.baseline, score=args.score,
        dtype="float64" if args.float64 else "float32",
    )  # fmt: skip
    for out in args.output.split(","):
        path = pathlib.Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        elif path.suffix == ".html":
            path.write_text(render.to_html(result), encoding="utf-8")
        else:
            render.to_png(result, path, layer=args.layer)
        print(f"wrote {path}")
    t, c = result["target"], result["completeness"]
    line = f"target {t['kind']} {t.get('label', t.get('token'))!r}: {t['score']} = {t['value']:.5f}"
    if c is not None:
        line += f"; completeness delta {c['delta']:.3g} (F(x) - F(baseline) = "
        line += f"{c['f_input'] - c['f_baseline']:.5f})"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
