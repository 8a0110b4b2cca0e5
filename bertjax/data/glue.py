"""GLUE: task registry, readers (GLUE TSV directory, TensorFlow Datasets), featurisation.

Every reader returns a list of `GlueExample` with the label already turned into the task's class
index (or a float score for STS-B), so the rest of bertjax never sees a source's label encoding.

GLUE TSV directory (the layout of GLUE's `download_glue_data.py`): `DATA_DIR/CoLA/train.tsv`,
`DATA_DIR/MNLI/dev_matched.tsv`, ... The files are read the way GLUE's reference code reads them:
tab-separated with quoting disabled (a `"` is an ordinary character), one row per line. A row
whose field count differs from the header, a missing label, a label outside the task's set, a
non-UTF-8 line or an empty split is an error naming the file and line.

TensorFlow Datasets: `tfds.data_source("glue/TASK")` (array_record files, no TensorFlow needed).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np

# The featuriser is shared with the other fine-tuning readers and inference; re-exported here.
from bertjax.data.batching import TrainIterator, eval_batches  # noqa: F401
from bertjax.data.features import (  # noqa: F401
    MODEL_KEYS,
    SpecialIds,
    encode_texts,
    featurize,
    truncate_pair_lengths,
)
from bertjax.data.records import Example

# ---------------------------------------------------------------------------------------------
# Task registry
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where one split's fields are in its TSV file.

    With a header (`header=True`) the columns are found by name in the header line; without one
    (CoLA's train/dev files) they are positions and every row has exactly `num_columns` fields.
    """

    text_a: str | int
    text_b: str | int | None = None
    label: str | int | None = None  # None: unlabelled (test files)
    index: str | int | None = None  # None: the row's position in the file
    header: bool = True
    num_columns: int | None = None  # only for header-less files


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its data layout, its labels and its official metrics."""

    name: str  # bertjax name, e.g. "stsb"
    dir_name: str  # directory in a GLUE TSV tree, e.g. "STS-B"
    labels: tuple[str, ...] | None  # label strings as in the TSV files; None = regression
    metrics: tuple[str, ...]  # official metrics (keys of bertjax.glue_metrics.METRICS)
    best_metric: str  # the metric that picks the best checkpoint / sweep setting
    tfds_text: tuple[str, ...]  # TFDS feature names of text_a (and text_b)
    labelled: Columns  # layout of train / dev files
    test: Columns  # layout of test files
    # split name -> TSV file name. TFDS split names are used throughout bertjax.
    files: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
    )
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    # Name(s) of the GLUE server submission file(s), one per test split.
    submission_names: tuple[str, ...] = ()
    tfds_name: str = ""  # "" -> glue/<name>

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Outputs of the classification head (1 for regression)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.labelled.text_b is not None


def _pair_task(name, dir_name, labels, metrics, best, a, b, label, **kw) -> GlueTask:
    return GlueTask(
        name=name,
        dir_name=dir_name,
        labels=labels,
        metrics=metrics,
        best_metric=best,
        tfds_text=kw.pop("tfds_text", (a, b)),
        labelled=Columns(text_a=a, text_b=b, label=label, index=kw.pop("index", None)),
        test=Columns(text_a=a, text_b=b, index=kw.pop("test_index", "index")),
        **kw,
    )


_BINARY = ("0", "1")
_NLI = ("entailment", "not_entailment")
# Same order as transformers' MnliProcessor, so a label index means the same in both.
_MNLI = ("contradiction", "entailment", "neutral")

TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            name="cola",
            dir_name="CoLA",
            labels=_BINARY,
            metrics=("mcc", "accuracy"),
            best_metric="mcc",
            tfds_text=("sentence",),
            # source, label, original judgement (often empty), sentence; no header.
            labelled=Columns(text_a=3, label=1, header=False, num_columns=4),
            test=Columns(text_a="sentence", index="index"),
            submission_names=("CoLA",),
        ),
        GlueTask(
            name="sst2",
            dir_name="SST-2",
            labels=_BINARY,
            metrics=("accuracy",),
            best_metric="accuracy",
            tfds_text=("sentence",),
            labelled=Columns(text_a="sentence", label="label"),
            test=Columns(text_a="sentence", index="index"),
            submission_names=("SST-2",),
        ),
        _pair_task(
            "mrpc",
            "MRPC",
            _BINARY,
            ("f1", "accuracy"),
            "f1",
            "#1 String",
            "#2 String",
            "Quality",
            tfds_text=("sentence1", "sentence2"),
            submission_names=("MRPC",),
        ),  # fmt: skip
        _pair_task(
            "stsb",
            "STS-B",
            None,
            ("pearson", "spearman"),
            "pearson",
            "sentence1",
            "sentence2",
            "score",
            index="index",
            submission_names=("STS-B",),
        ),  # fmt: skip
        _pair_task(
            "qqp",
            "QQP",
            _BINARY,
            ("f1", "accuracy"),
            "f1",
            "question1",
            "question2",
            "is_duplicate",
            index="id",
            test_index="id",
            submission_names=("QQP",),
        ),  # fmt: skip
        _pair_task(
            "mnli",
            "MNLI",
            _MNLI,
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            "gold_label",
            index="index",
            tfds_text=("premise", "hypothesis"),
            files={
                "train": "train.tsv",
                "validation_matched": "dev_matched.tsv",
                "validation_mismatched": "dev_mismatched.tsv",
                "test_matched": "test_matched.tsv",
                "test_mismatched": "test_mismatched.tsv",
            },
            eval_splits=("validation_matched", "validation_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            submission_names=("MNLI-m", "MNLI-mm"),
        ),  # fmt: skip
        _pair_task(
            "qnli",
            "QNLI",
            _NLI,
            ("accuracy",),
            "accuracy",
            "question",
            "sentence",
            "label",
            index="index",
            submission_names=("QNLI",),
        ),  # fmt: skip
        _pair_task(
            "rte",
            "RTE",
            _NLI,
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            "label",
            index="index",
            submission_names=("RTE",),
        ),  # fmt: skip
        _pair_task(
            "wnli",
            "WNLI",
            _BINARY,
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            "label",
            index="index",
            submission_names=("WNLI",),
        ),  # fmt: skip
        # The diagnostic set: test only, scored by an MNLI model (GLUE's AX.tsv).
        _pair_task(
            "ax",
            "diagnostic",
            _MNLI,
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            None,
            tfds_text=("premise", "hypothesis"),
            files={"test": "diagnostic.tsv"},
            eval_splits=(),
            submission_names=("AX",),
        ),  # fmt: skip
    ]
}


def get_task(name: str) -> GlueTask:
    """The GLUE task called `name` (case-insensitive; "sts-b", "sst-2" also accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[key]


# One row (texts, label as class index / float / None, index): the record every fine-tuning
# reader produces, so GLUE and the user's own files share the featuriser and batching.
GlueExample = Example


# ---------------------------------------------------------------------------------------------
# GLUE TSV reader
# ---------------------------------------------------------------------------------------------


class GlueDataError(ValueError):
    """Bad GLUE input; the message names the file (and line) at fault."""


def _split_path(task: GlueTask, data_dir: str, split: str) -> str:
    if split not in task.files:
        raise GlueDataError(
            f"GLUE task {task.name!r} has no split {split!r}; splits: {list(task.files)}"
        )
    candidates = [
        os.path.join(data_dir, task.dir_name, task.files[split]),
        os.path.join(data_dir, task.files[split]),  # data_dir is the task's own directory
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise GlueDataError(
        f"GLUE {task.name} {split} split not found: looked for {' and '.join(candidates)}"
    )


def _read_lines(path: str) -> list[str]:
    """The file's lines, split on "\\n" only (a stray "\\r" inside a sentence stays text),
    without a leading UTF-8 byte-order mark."""
    with open(path, "rb") as f:
        data = f.read()
    # GLUE's own MRPC files start with a UTF-8 byte-order mark; it is not part of the header.
    data = data.removeprefix(b"\xef\xbb\xbf")
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()  # the final newline ends the last row; CoLA's dev.tsv has none
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as e:
            raise GlueDataError(f"{path}:{number}: not valid UTF-8 ({e})") from None
    return lines


def _parse_label(task: GlueTask, value: str, where: str) -> int | float:
    if task.labels is None:
        try:
            score = float(value)
        except ValueError:
            raise GlueDataError(f"{where}: score {value!r} is not a number") from None
        if not (math.isfinite(score) and 0.0 <= score <= 5.0):
            raise GlueDataError(f"{where}: score {value!r} is outside STS-B's range [0, 5]")
        return score
    if value not in task.labels:
        raise GlueDataError(
            f"{where}: label {value!r} is not one of {task.name}'s labels {list(task.labels)}"
        )
    return task.labels.index(value)


def read_tsv(
    task: GlueTask | str, path: str, labelled: bool, bad_rows: str = "error"
) -> list[GlueExample]:
    """Reads one GLUE TSV file of `task`.

    Args:
      task: the task (or its name).
      path: the .tsv file.
      labelled: True for train/dev files, False for test files (different layouts).
      bad_rows: "error" (default) raises on the first malformed row; "skip" drops malformed rows
        (wrong field count) and logs how many and where. Bad labels are always an error.
    """
    task = get_task(task) if isinstance(task, str) else task
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows={bad_rows!r}; expected 'error' or 'skip'")
    cols = task.labelled if labelled else task.test
    lines = _read_lines(path)
    first_row = 0
    if cols.header:
        if not lines:
            raise GlueDataError(f"{path}: empty file (expected a header line and rows)")
        header = lines[0].split("\t")
        first_row = 1
        num_columns = len(header)

        def position(column: str | int | None) -> int | None:
            if column is None or isinstance(column, int):
                return column
            if column not in header:
                raise GlueDataError(
                    f"{path}:1: header has no column {column!r} for GLUE {task.name}; "
                    f"header columns: {header}"
                )
            return header.index(column)
    else:
        num_columns = cols.num_columns

        def position(column: str | int | None) -> int | None:
            return column  # positions already

    pos_a, pos_b = position(cols.text_a), position(cols.text_b)
    pos_label, pos_index = position(cols.label), position(cols.index)

    examples: list[GlueExample] = []
    skipped: list[int] = []
    for number in range(first_row, len(lines)):
        line_no = number + 1
        fields = lines[number].split("\t")
        where = f"{path}:{line_no}"
        if len(fields) != num_columns:
            if bad_rows == "skip":
                skipped.append(line_no)
                continue
            raise GlueDataError(
                f"{where}: malformed row: {len(fields)} tab-separated fields, expected "
                f"{num_columns} (GLUE {task.name} {'train/dev' if labelled else 'test'} layout)"
            )
        label = None
        if pos_label is not None:
            if fields[pos_label] == "":
                raise GlueDataError(f"{where}: missing label")
            label = _parse_label(task, fields[pos_label], where)
        if pos_index is None:
            index = len(examples) + len(skipped)
        else:
            try:
                index = int(fields[pos_index])
            except ValueError:
                raise GlueDataError(
                    f"{where}: index {fields[pos_index]!r} is not an integer"
                ) from None
        examples.append(
            GlueExample(
                index=index,
                text_a=fields[pos_a],
                text_b=None if pos_b is None else fields[pos_b],
                label=label,
            )
        )
    if skipped:
        logging.warning(
            "%s: skipped %d malformed row(s) (bad_rows='skip'), lines %s%s",
            path, len(skipped), skipped[:20], " ..." if len(skipped) > 20 else "",
        )  # fmt: skip
    if not examples:
        raise GlueDataError(f"{path}: no rows (empty split)")
    return examples


def load_tsv(
    task: GlueTask | str, data_dir: str, split: str, bad_rows: str = "error"
) -> list[GlueExample]:
    """Reads `split` ("train", "validation", "validation_matched", "test", ...) of a TSV tree."""
    task = get_task(task) if isinstance(task, str) else task
    path = _split_path(task, data_dir, split)
    return read_tsv(task, path, labelled=not split.startswith("test"), bad_rows=bad_rows)


# ---------------------------------------------------------------------------------------------
# TensorFlow Datasets reader
# ---------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_tfds(task: GlueTask | str, split: str, data_dir: str | None = None) -> list[GlueExample]:
    """Reads `split` of `glue/TASK` through `tfds.data_source` (array_record; no TensorFlow).

    TFDS class indices are mapped through the label names to this task's label order, so
    `GlueExample.label` means the same whichever reader produced it.
    """
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.glue  # noqa: F401  (registers glue/* with tfds)

    task = get_task(task) if isinstance(task, str) else task
    name = task.tfds_name or f"glue/{task.name}"
    kwargs = {"file_format": "array_record"}
    source = tfds.data_source(name, split=split, data_dir=data_dir, builder_kwargs=kwargs)
    label_map: dict[int, int] | None = None
    if task.labels is not None:
        names = tfds.builder(name, data_dir=data_dir, **kwargs).info.features["label"].names
        # Labels that TFDS names like the TSV files (entailment, ...) map by name; the 0/1 tasks
        # (CoLA "acceptable", SST-2 "positive", ...) keep their index, which equals the TSV value.
        label_map = {
            i: task.labels.index(n if n in task.labels else str(i)) for i, n in enumerate(names)
        }
    where = f"tfds {name} {split}"
    examples = []
    for i in range(len(source)):
        row = source[i]
        raw = row["label"].item() if isinstance(row["label"], np.ndarray) else row["label"]
        label: int | float | None
        if raw == -1:  # TFDS marks unlabelled (test) rows with -1
            label = None
        elif label_map is None:
            label = float(raw)
        elif int(raw) in label_map:
            label = label_map[int(raw)]
        else:
            raise GlueDataError(f"{where} row {i}: label {raw!r} outside {list(label_map)}")
        if label is None and not split.startswith("test"):
            raise GlueDataError(f"{where} row {i}: unlabelled row in a labelled split")
        examples.append(
            GlueExample(
                index=int(np.asarray(row["idx"]).item()),
                text_a=_text(row[task.tfds_text[0]]),
                text_b=_text(row[task.tfds_text[1]]) if len(task.tfds_text) > 1 else None,
                label=label,
            )
        )
    if not examples:
        raise GlueDataError(f"{where}: no rows (empty split)")
    return examples


def load_split(
    task: GlueTask | str,
    split: str,
    data_dir: str = "",
    tfds_data_dir: str | None = None,
    bad_rows: str = "error",
) -> list[GlueExample]:
    """`split` of `task` from the GLUE TSV tree `data_dir`, or from TFDS when `data_dir` is ""."""
    if data_dir:
        return load_tsv(task, data_dir, split, bad_rows=bad_rows)
    return load_tfds(task, split, data_dir=tfds_data_dir)
