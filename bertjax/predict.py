"""Predictions of a fine-tuned run: score a file, or write GLUE test-server submission files.

    # The user's own file (classify runs; any run for a .csv): every input field kept, plus the
    # predicted label, its score and every class's probability (bertjax/predict_files.py):
    python -m bertjax.predict --workdir=runs/reviews --input=new.csv --output=pred.jsonl

    # Score a TSV (GLUE layout, or any TSV with a header and --text_a/--text_b) or a JSONL file:
    python -m bertjax.predict --workdir=runs/stsb --input=pairs.jsonl --output=preds.jsonl

    # Question answering / NER runs: JSONL in ({"question","context"} / {"text"}), answers /
    # entity spans with character offsets out (bertjax/predict_spans.py):
    python -m bertjax.predict --workdir=runs/squad --input=qs.jsonl --output=answers.jsonl

    # GLUE submission files (STS-B.tsv, or MNLI-m.tsv + MNLI-mm.tsv + AX.tsv for MNLI):
    python -m bertjax.predict --workdir=runs/mnli --submission_dir=submission \
        --data_dir=glue_data          # (or omit --data_dir to read TFDS glue/TASK test splits)

The model is rebuilt from the run directory alone (`bertjax.inference.load_run`): ``run.json``
and ``vocab.txt`` (written by the training loop at the start of training; older runs'
``glue_run.json`` is read too) and the best checkpoint (``best/``, or the latest training
checkpoint when the run has none). Predictions are written with the label strings GLUE
uses (``entailment``, ``0``/``1``, the STS-B score) and, for classification, the probability of
every label.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from bertjax.data import glue, jsonl

# ---------------------------------------------------------------------------------------------
# The fine-tuned model
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictor:
    """A fine-tuned GLUE model ready to score examples in fixed-size batches."""

    task: glue.GlueTask
    tokenizer: Any
    max_seq_length: int
    apply_fn: Any  # jitted (params, batch) -> logits
    params: Any

    def predict(
        self, examples: Sequence[glue.GlueExample], batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(predictions, probabilities): class indices and softmax [N, C], or scores and None."""
        special = glue.SpecialIds(
            cls=self.tokenizer.cls_id, sep=self.tokenizer.sep_id, pad=self.tokenizer.pad_id
        )
        features = glue.featurize(
            examples,
            self.tokenizer.encode_batch,
            special,
            self.max_seq_length,
            self.task.is_regression,
        )
        logits = []
        for batch in glue.eval_batches(features, batch_size):
            inputs = {k: batch[k] for k in glue.MODEL_KEYS}
            out = np.asarray(self.apply_fn(self.params, inputs))
            logits.append(out[batch["weights"] > 0])
        all_logits = np.concatenate(logits).astype(np.float64)
        if self.task.is_regression:
            return all_logits[:, 0], None
        shifted = np.exp(all_logits - all_logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        return probs.argmax(-1), probs


def load_predictor(workdir: str, checkpoint: str = "") -> Predictor:
    """Rebuilds the model of a GLUE run from `workdir` (params from `checkpoint` if given)."""
    import jax

    from bertjax import inference

    run = inference.load_run(workdir, checkpoint)
    glue_name = run.manifest.get("data", {}).get("glue_task")
    if not glue_name:
        raise ValueError(f"{workdir}: not a GLUE run (run.json has no data.glue_task)")
    apply_fn = jax.jit(lambda params, batch: inference.forward(run.module, params, batch))
    return Predictor(
        task=glue.get_task(glue_name),
        tokenizer=run.tokenizer,
        max_seq_length=run.max_seq_length,
        apply_fn=apply_fn,
        params=run.params,
    )


# ---------------------------------------------------------------------------------------------
# Input files
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path: str, task: glue.GlueTask, text_a: str, text_b: str) -> list[glue.GlueExample]:
    examples = []
    keys_a = [text_a] if text_a else ["text_a", task.tfds_text[0]]
    keys_b = [text_b] if text_b else ["text_b", *task.tfds_text[1:]]
    for line_no, row in jsonl.read_objects(path, glue.GlueDataError):
        a = next((row[k] for k in keys_a if k in row), None)
        b = next((row[k] for k in keys_b if k in row), None) if task.is_pair else None
        if a is None or (task.is_pair and b is None):
            want = keys_a + (keys_b if task.is_pair else [])
            raise glue.GlueDataError(
                f"{path}:{line_no}: missing text field(s); {task.name} reads {want}"
            )
        index = row.get("index", row.get("idx", len(examples)))
        examples.append(glue.GlueExample(index=int(index), text_a=a, text_b=b, label=None))
    if not examples:
        raise glue.GlueDataError(f"{path}: no rows")
    return examples


def _read_generic_tsv(path: str, task: glue.GlueTask, text_a: str, text_b: str):
    """A TSV with a header; text columns named by --text_a / --text_b (quoting disabled)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if len(rows) < 2:
        raise glue.GlueDataError(f"{path}: no rows after the header")
    header = rows[0]
    names = [text_a] + ([text_b] if task.is_pair else [])
    for name in names:
        if name not in header:
            raise glue.GlueDataError(f"{path}:1: no column {name!r}; header: {header}")
    pos = [header.index(n) for n in names]
    examples = []
    for line_no, fields in enumerate(rows[1:], start=2):
        if len(fields) != len(header):
            raise glue.GlueDataError(
                f"{path}:{line_no}: malformed row: {len(fields)} fields, header has {len(header)}"
            )
        b = fields[pos[1]] if task.is_pair else None
        examples.append(
            glue.GlueExample(index=line_no - 2, text_a=fields[pos[0]], text_b=b, label=None)
        )
    return examples


def read_inputs(
    path: str, task: glue.GlueTask, text_a: str = "", text_b: str = ""
) -> list[glue.GlueExample]:
    """Examples of a .jsonl file, or of a .tsv file (GLUE test or dev layout of `task`, or any
    TSV with a header when `text_a` / `text_b` name its columns)."""
    if path.endswith((".jsonl", ".json")):
        return _read_jsonl(path, task, text_a, text_b)
    if text_a:
        return _read_generic_tsv(path, task, text_a, text_b)
    # A GLUE file of the task: a test file (its header has no label column) or a train/dev file.
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    test_columns = [c for c in (task.test.text_a, task.test.text_b, task.test.index) if c]
    label = task.labelled.label
    is_test = all(c in header for c in test_columns) and not (
        isinstance(label, str) and label in header
    )
    return glue.read_tsv(task, path, labelled=not is_test)


# ---------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------


def label_strings(task: glue.GlueTask, predictions: np.ndarray) -> list[str]:
    """What GLUE's server expects: the label names, or the STS-B score with 3 decimals."""
    if task.is_regression:
        return [f"{float(p):.3f}" for p in predictions]
    return [task.labels[int(p)] for p in predictions]


def write_predictions(
    path: str,
    task: glue.GlueTask,
    examples: Sequence[glue.GlueExample],
    predictions: np.ndarray,
    probabilities: np.ndarray | None,
) -> None:
    """JSONL (`path` ends in .jsonl/.json) or TSV: index, prediction, [label], p(label)..."""
    labels = label_strings(task, predictions)
    has_gold = all(e.label is not None for e in examples)
    gold = label_strings(task, np.array([e.label for e in examples])) if has_gold else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.endswith((".jsonl", ".json")):
            for i, e in enumerate(examples):
                row: dict[str, Any] = {"index": e.index, "prediction": labels[i]}
                if gold:
                    row["label"] = gold[i]
                if probabilities is not None:
                    row["probabilities"] = {
                        name: round(float(p), 6)
                        for name, p in zip(task.labels, probabilities[i], strict=True)
                    }
                f.write(json.dumps(row) + "\n")
            return
        header = ["index", "prediction"] + (["label"] if gold else [])
        if probabilities is not None:
            header += [f"p_{name}" for name in task.labels]
        f.write("\t".join(header) + "\n")
        for i, e in enumerate(examples):
            fields = [str(e.index), labels[i]] + ([gold[i]] if gold else [])
            if probabilities is not None:
                fields += [f"{float(p):.6f}" for p in probabilities[i]]
            f.write("\t".join(fields) + "\n")


def write_submission(
    predictor: Predictor,
    out_dir: str,
    data_dir: str = "",
    tfds_data_dir: str | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Writes the GLUE server files of the predictor's task (plus AX.tsv for MNLI); their paths.

    Each file is `index<TAB>prediction` with GLUE's label strings, one row per test example.
    """
    task = predictor.task
    jobs = list(
        zip(task.test_splits, task.submission_names, [task] * len(task.test_splits), strict=True)
    )
    if task.name == "mnli":  # the diagnostic set is scored by the MNLI model
        ax = glue.get_task("ax")
        jobs.append(("test", ax.submission_names[0], ax))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for split, name, source_task in jobs:
        try:
            examples = glue.load_split(source_task, split, data_dir, tfds_data_dir)
        except Exception as e:
            if source_task is task:
                raise
            # AX is an extra of MNLI: say loudly that it is missing, but keep MNLI's files.
            logging.warning(
                "%s.tsv not written: the diagnostic set could not be read (%s)", name, e
            )
            continue
        predictions, _ = predictor.predict(examples, batch_size)
        path = os.path.join(out_dir, f"{name}.tsv")
        with open(path, "w", encoding="utf-8") as f:
            f.write("index\tprediction\n")
            for e, label in zip(examples, label_strings(task, predictions), strict=True):
                f.write(f"{e.index}\t{label}\n")
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    if not (FLAGS.input or FLAGS.submission_dir):
        raise SystemExit("give --input (with --output) and/or --submission_dir")
    from bertjax import inference

    manifest = inference.read_manifest(FLAGS.workdir)
    if manifest["task"] in ("squad", "ner"):  # answers / entities with character offsets
        from bertjax import predict_spans

        if not (FLAGS.input and FLAGS.output):
            raise SystemExit(f"a {manifest['task']} run needs --input and --output (.jsonl)")
        run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint or "")
        rows = predict_spans.predict_file(
            run, FLAGS.input, FLAGS.output, text_a=FLAGS.text_a, text_b=FLAGS.text_b,
            batch_size=FLAGS.batch_size,
        )  # fmt: skip
        print(f"wrote {rows} predictions to {FLAGS.output}")
        return
    glue_run = bool((manifest.get("data") or {}).get("glue_task"))
    if FLAGS.input and (not glue_run or FLAGS.input.endswith(".csv") or FLAGS.format):
        # The user's own file: every input field kept, plus label, score and probabilities.
        from bertjax import predict_files

        if not FLAGS.output:
            raise SystemExit("--input needs --output (a .csv, .tsv or .jsonl path)")
        run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint or "")
        rows = predict_files.predict_file(
            run, FLAGS.input, FLAGS.output, text_a=FLAGS.text_a, text_b=FLAGS.text_b,
            fmt=FLAGS.format, batch_size=FLAGS.batch_size,
        )  # fmt: skip
        print(f"wrote {rows} predictions to {FLAGS.output}")
        if not FLAGS.submission_dir:
            return
    if not glue_run:
        raise SystemExit(
            f"--submission_dir needs a GLUE run; {FLAGS.workdir} is a {manifest['task']} run"
        )
    predictor = load_predictor(FLAGS.workdir, FLAGS.checkpoint or "")
    if FLAGS.input and not (FLAGS.input.endswith(".csv") or FLAGS.format):
        if not FLAGS.output:
            raise SystemExit("--input needs --output (a .jsonl or .tsv path)")
        examples = read_inputs(FLAGS.input, predictor.task, FLAGS.text_a, FLAGS.text_b)
        predictions, probabilities = predictor.predict(examples, FLAGS.batch_size)
        write_predictions(FLAGS.output, predictor.task, examples, predictions, probabilities)
        logging.info("wrote %d predictions to %s", len(examples), FLAGS.output)
        if all(e.label is not None for e in examples):
            from bertjax import glue_metrics

            gold = np.array([e.label for e in examples])
            scores = glue_metrics.compute(predictor.task.metrics, gold, predictions)
            print(json.dumps({"file": FLAGS.input, **scores}))
    if FLAGS.submission_dir:
        for path in write_submission(
            predictor,
            FLAGS.submission_dir,
            FLAGS.data_dir,
            FLAGS.tfds_data_dir or None,
            FLAGS.batch_size,
        ):
            print(f"wrote {path}")


def _define_flags() -> None:
    """Defines the CLI's flags; flags another module already defined (bertjax.main's
    --workdir, bertjax.generate_cli's --checkpoint, when imported into one process as tests do)
    are reused rather than defined twice."""
    from absl import flags

    def string(name: str, default: str | None, help_text: str, **kwargs: Any) -> None:
        if name not in flags.FLAGS:
            flags.DEFINE_string(name, default, help_text, **kwargs)

    string("workdir", None, "Directory of a fine-tuning run.", required=True)
    string("checkpoint", "", "Checkpoint to load (default: the run's best).")
    string("input", "", "File to score: .csv, .tsv or .jsonl (GLUE runs: GLUE layout).")
    string("output", "", "Predictions file: .csv, .tsv or .jsonl.")
    string("format", "", "Input format (csv | tsv | jsonl); '' = from the extension.")
    string("text_a", "", "Column / JSON key of the text (default: the run's).")
    string("text_b", "", "Column / JSON key of the second text of a pair.")
    string("submission_dir", "", "Write GLUE server files (TASK.tsv) here.")
    string("data_dir", "", "GLUE TSV directory of the test sets ('' = TFDS).")
    string("tfds_data_dir", "", "TFDS data directory ('' = TFDS's default).")
    if "batch_size" not in flags.FLAGS:
        flags.DEFINE_integer("batch_size", 64, "Examples per forward pass.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
