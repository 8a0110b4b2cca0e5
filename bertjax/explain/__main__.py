"""python -m bertjax.explain --workdir=DIR --text="..." [--text_pair=...] [--target=LABEL]
    [--method=integrated_gradients|grad_x_input|grad_norm|occlusion] --output=OUT

QA (squad) runs: --question="..." --context="..." [--answer_start=C --answer_end=C |
    --answer_tokens=FIRST,LAST] [--qa_score=span|start|end] (default: the predicted answer).
NER runs: --text="..." [--word=INDEX] [--target=TAG] (default: the first predicted entity's
    first word and its predicted tag).

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
    p.add_argument("--text", default=None, help="the input (classifier, MLM, GPT, NER runs)")
    p.add_argument("--text_pair", default=None, help="second text of a pair (BERT runs)")
    p.add_argument("--target", default=None,
                   help="label (classifier), token (MLM at [MASK], GPT next token); "
                        "default: the prediction")  # fmt: skip
    p.add_argument("--question", default=None, help="QA runs: the question")
    p.add_argument("--context", default=None, help="QA runs: the context")
    p.add_argument("--answer_start", type=int, default=None,
                   help="QA runs: the explained span's first character in the context")  # fmt: skip
    p.add_argument("--answer_end", type=int, default=None,
                   help="QA runs: the span's end character (exclusive)")  # fmt: skip
    p.add_argument(
        "--answer_tokens",
        default=None,
        help="QA runs: FIRST,LAST token positions of the span (one-window context)",
    )
    p.add_argument(
        "--qa_score",
        default="span",
        choices=targets.QA_SCORES,
        help="QA runs: start + end logit (span), or the start or end logit alone",
    )
    p.add_argument("--word", type=int, default=None,
                   help="NER runs: the index of the explained word (default: the first "
                        "predicted entity's first word)")  # fmt: skip
    p.add_argument("--method", default="integrated_gradients", choices=attributions.METHODS)
    p.add_argument("--steps", type=int, default=64, help="integrated gradients' points")
    p.add_argument("--rule", default="gauss_legendre", choices=attributions.RULES)
    p.add_argument("--baseline", default="pad", choices=explainer.BASELINES)
    p.add_argument("--score", default="logit", choices=targets.CLASS_SCORES,
                   help="which score of the target class / tag (classifiers, NER)")  # fmt: skip
    p.add_argument("--float64", action="store_true", help="evaluate the model in float64")
    p.add_argument("--layer", type=int, default=None, help="PNG: attention layer (default last)")
    p.add_argument("--output", required=True, help="OUT.json, OUT.html, OUT.png (comma-separated)")
    args = p.parse_args(argv)
    for out in args.output.split(","):
        if pathlib.Path(out).suffix not in FORMATS:
            p.error(f"--output={out}: the extension must be one of {list(FORMATS)}")
    qa = args.question is not None or args.context is not None
    if qa and (args.question is None or args.context is None or args.text is not None):
        p.error("a QA run takes --question and --context (and no --text)")
    if not qa and args.text is None:
        p.error("--text is required (--question and --context for QA runs)")
    if (args.answer_start is None) != (args.answer_end is None):
        p.error("give both --answer_start and --answer_end")
    args.answer = None if args.answer_start is None else (args.answer_start, args.answer_end)
    if args.answer_tokens is not None:
        try:
            first, last = (int(v) for v in args.answer_tokens.split(","))
        except ValueError:
            p.error(f"--answer_tokens={args.answer_tokens!r}: expected FIRST,LAST (two ints)")
        args.answer_tokens = (first, last)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    from bertjax.inference import load_run

    run = load_run(args.workdir, args.checkpoint, dtype="float32")
    qa = args.question is not None
    if qa != (run.model_config.head == "question_answering"):
        print(f"error: {args.workdir} is a {run.manifest.get('task')} run (head "
              f"{run.model_config.head}): " + ("--question/--context are for QA runs" if qa
              else "give --question and --context, not --text"), file=sys.stderr)  # fmt: skip
        return 2
    try:
        result = explainer.explain(
            run, args.question if qa else args.text, args.context if qa else args.text_pair,
            target=args.target, method=args.method, steps=args.steps, rule=args.rule,
            baseline=args.baseline, score=args.score, word=args.word, answer=args.answer,
            answer_tokens=args.answer_tokens, qa_score=args.qa_score,
            dtype="float64" if args.float64 else "float32",
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    line = f"target {targets.describe(t)}: {t['score']} = {t['value']:.5f}"
    if t.get("word_from") or t.get("note"):
        line += f" ({t.get('note') or 'word: ' + t['word_from']})"
    if c is not None:
        line += f"; completeness delta {c['delta']:.3g} (F(x) - F(baseline) = "
        line += f"{c['f_input'] - c['f_baseline']:.5f})"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
