"""The user's own labelled files: CSV, TSV or JSON lines, read into example records.

    table = read_table("reviews.csv")                     # format from the extension
    examples, stats = to_examples(table, columns, labels, split="train", bad_rows="error")

Formats (`format` overrides the extension): ``.csv`` RFC 4180 (quoted fields, embedded newlines,
doubled quotes), ``.tsv`` / ``.tab`` tab-separated with quoting off (as GLUE's files: a ``"`` is
an ordinary character), ``.jsonl`` / ``.ndjson`` one JSON object per line. UTF-8 with or without
a byte-order mark; LF or CRLF line ends. The first line of a CSV/TSV file is its header.

Every problem is an error naming the file and line: a missing column (with the columns the file
has), a row with the wrong number of fields, an empty text, a missing label, a label not seen in
training, a regression target that is not a number. With ``bad_rows="skip"`` the row problems
(not a missing column) skip the row instead; skipped rows are counted by reason and logged.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bertjax.data import jsonl

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
PROBLEM_TYPES = ("auto", "single_label", "multi_label", "regression")


class RecordError(ValueError):
    """Bad input in a user's file; the message names the file (and line, column or field)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One row: texts, label (class index / float / multi-hot tuple / None), its index.

    The same record the GLUE readers produce (`bertjax.data.glue.GlueExample` is this class).
    """

    index: int
    text_a: str
    text_b: str | None
    label: Any


@dataclasses.dataclass
class Table:
    """A file's rows as strings (JSON values kept as parsed), with their line numbers."""

    path: str
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]  # the line each row starts on (1-based; the header is line 1)
    malformed: int = 0  # rows skipped for a wrong field count (bad_rows="skip")


def file_format(path: str, override: str = "") -> str:
    """ "csv" | "tsv" | "jsonl": `override` if set, else from the extension."""
    if override:
        if override not in ("csv", "tsv", "jsonl"):
            raise RecordError(f"config.data.format={override!r}: expected csv, tsv or jsonl")
        return override
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise RecordError(
            f"{path}: cannot tell the format from the extension {ext!r} (known: "
            f"{sorted(FORMATS)}); set config.data.format to csv, tsv or jsonl"
        )
    return FORMATS[ext]


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RecordError(f"{path}: file not found") from None
    try:
        return data.decode("utf-8-sig")  # drops a byte-order mark
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RecordError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None


def read_table(path: str, fmt: str = "", bad_rows: str = "error") -> Table:
    """All rows of `path` (see the module docstring for the formats)."""
    fmt = file_format(path, fmt)
    text = _read_text(path)
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows, lines = [], []
    header: list[str] | None = None
    skipped = 0
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if header is None:
                header = fields
                if not header or len(set(header)) != len(header) or "" in header:
                    raise RecordError(f"{path}:1: header {header} must name each column once")
                continue
            if not fields or fields == [""]:
                continue  # a blank line (the end of the file)
            if len(fields) != len(header):
                if bad_rows == "skip":
                    skipped += 1
                    continue
                raise RecordError(
                    f"{path}:{line}: {len(fields)} fields, the header has {len(header)} "
                    f"({header}); quote fields that contain the separator"
                )
            rows.append(dict(zip(header, fields, strict=True)))
            lines.append(line)
    except csv.Error as e:
        raise RecordError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({e})") from None
    if header is None:
        raise RecordError(f"{path}: empty file (expected a header line and rows)")
    return Table(path, header, rows, lines, malformed=skipped)


def _read_jsonl(path: str, text: str) -> Table:
    rows, lines, columns = [], [], {}
    for number, row in jsonl.objects(text.splitlines(), path, RecordError):
        for key in row:
            columns.setdefault(key, None)
        rows.append(row)
        lines.append(number)
    return Table(path, list(columns), rows, lines)


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _label_text(value: Any) -> str:
    """A single label as the string the run stores (JSON 1 and CSV "1" are the same label)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def split_labels(value: Any, separator: str) -> list[str]:
    """Labels of a multi-label row: a JSON list, or one field split on `separator`."""
    if isinstance(value, list):
        return [_label_text(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [_label_text(v) for v in parsed]
    return [t.strip() for t in text.split(separator) if t.strip()] if text else []


def infer_problem_type(values: Sequence[Any]) -> str:
    """ "regression" when every label is a number and one is not an integer, else single_label."""
    numbers = [_as_number(v) for v in values]
    if values and all(n is not None and math.isfinite(n) for n in numbers):
        if any(not float(n).is_integer() for n in numbers):
            return "regression"
    return "single_label"


def sort_labels(names: set[str]) -> list[str]:
    """The label order of the logits: numerically when every label is an integer, else text."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


@dataclasses.dataclass(frozen=True)
class Columns:
    text: str
    text_pair: str = ""
    label: str = ""


@dataclasses.dataclass
class SplitStats:
    """Rows read, used and skipped (by reason) of one split, and its label distribution."""

    path: str
    read: int = 0
    used: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    labels: Counter = dataclasses.field(default_factory=Counter)

    def summary(self) -> str:
        skip = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.path}: {self.read} rows read, {self.used} used, "
            f"{sum(self.skipped.values())} skipped ({skip})"
        )


def check_columns(table: Table, columns: Columns, need_label: bool) -> bool:
    """Raises when a text column (or, if `need_label`, the label column) is missing; returns
    whether the table has the label column."""
    wanted = [("config.data.text_column", columns.text)]
    if columns.text_pair:
        wanted.append(("config.data.text_pair_column", columns.text_pair))
    if need_label:
        wanted.append(("config.data.label_column", columns.label))
    present = set(table.columns)
    for key, name in wanted:
        if name not in present:
            hint = ""
            if str(table.path).lower().endswith((".csv", ".tsv")):
                # A file without a header shows its first row here: say where the names come from.
                hint = " (read from its first line: a CSV/TSV file starts with a header line)"
            raise RecordError(
                f"{table.path}: no column {name!r} ({key}); the file's columns: "
                f"{table.columns}{hint}"
            )
    return bool(columns.label) and columns.label in present


def to_examples(
    table: Table,
    columns: Columns,
    problem_type: str,
    label_names: Sequence[str] | None,
    *,
    label_separator: str = ",",
    bad_rows: str = "error",
    require_labels: bool = True,
) -> tuple[list[Example], SplitStats]:
    """The table's rows as examples; labels mapped through `label_names` (None: regression).

    problem_type: single_label / multi_label / regression (already resolved from "auto").
    require_labels: False for a test file, which may lack the label column (labels None).
    """
    if bad_rows not in ("error", "skip"):
        raise RecordError(f"config.data.bad_rows={bad_rows!r}: expected 'error' or 'skip'")
    has_label = check_columns(table, columns, require_labels)
    index_of = {n: i for i, n in enumerate(label_names or [])}
    stats = SplitStats(table.path, read=len(table.rows) + table.malformed)
    if table.malformed:
        stats.skipped["malformed"] = table.malformed
    examples: list[Example] = []

    def bad(line: int, reason: str, message: str) -> None:
        if bad_rows == "skip":
            stats.skipped[reason] += 1
            return
        raise RecordError(f"{table.path}:{line}: {message} (config.data.bad_rows=skip skips it)")

    for row, line in zip(table.rows, table.lines, strict=True):
        text_a = row.get(columns.text)
        text_b = row.get(columns.text_pair) if columns.text_pair else None
        if text_a is None or not str(text_a).strip():
            bad(line, "empty text", f"empty text in column {columns.text!r}")
            continue
        if columns.text_pair and (text_b is None or not str(text_b).strip()):
            bad(line, "empty text", f"empty text in column {columns.text_pair!r}")
            continue
        label: Any = None
        if has_label:
            raw = row.get(columns.label)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                bad(line, "missing label", f"missing label in column {columns.label!r}")
                continue
            if problem_type == "regression":
                label = _as_number(raw)
                if label is None or not math.isfinite(label):
                    bad(line, "non-numeric target", f"regression target {raw!r} is not a number")
                    continue
                stats.labels["<number>"] += 1
            elif problem_type == "multi_label":
                names = split_labels(raw, label_separator)
                unseen = [n for n in names if n not in index_of]
                if unseen:
                    bad(line, "unseen label", f"label(s) {unseen} not seen in training "
                        f"(training labels: {list(index_of)})")  # fmt: skip
                    continue
                hot = [0.0] * len(index_of)
                for n in names:
                    hot[index_of[n]] = 1.0
                    stats.labels[n] += 1
                label = tuple(hot)
            else:
                name = _label_text(raw)
                if name not in index_of:
                    bad(line, "unseen label", f"label {name!r} not seen in training "
                        f"(training labels: {list(index_of)})")  # fmt: skip
                    continue
                label = index_of[name]
                stats.labels[name] += 1
        examples.append(
            Example(
                index=len(examples),
                text_a=str(text_a),
                text_b=None if text_b is None else str(text_b),
                label=label,
            )
        )
    stats.used = len(examples)
    if not examples:
        raise RecordError(f"{table.path}: no usable rows ({stats.summary()})")
    return examples, stats


def training_labels(
    table: Table, columns: Columns, problem_type: str, label_separator: str
) -> tuple[str, list[str] | None]:
    """(resolved problem type, label names in logit order) from the training table.

    "auto" picks regression or single_label (`infer_problem_type`). Fewer than two classes is
    an error naming the file.
    """
    if problem_type not in PROBLEM_TYPES:
        raise RecordError(
            f"config.data.problem_type={problem_type!r}: expected one of {list(PROBLEM_TYPES)}"
        )
    check_columns(table, columns, need_label=True)
    values = [r.get(columns.label) for r in table.rows]
    values = [v for v in values if v is not None and not (isinstance(v, str) and not v.strip())]
    if problem_type == "auto":
        problem_type = infer_problem_type(values)
    if problem_type == "regression":
        return problem_type, None
    if problem_type == "multi_label":
        names = {n for v in values for n in split_labels(v, label_separator)}
    else:
        names = {_label_text(v) for v in values}
    if len(names) < 2:
        raise RecordError(
            f"{table.path}: the training labels in column {columns.label!r} hold "
            f"{len(names)} class(es) {sorted(names)}; a classifier needs at least two"
        )
    return problem_type, sort_labels(names)
