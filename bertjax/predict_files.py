"""Predictions on the user's own files: every input field kept, in input order, plus the model's.

Used by `python -m bertjax.predict` for runs of the classify task (and for any run when the
input is a .csv file). Output columns added to each row:

* single_label: ``prediction`` (the user's own label string), ``score`` (its probability) and
  one probability per class (CSV: ``p_<label>`` columns; JSONL: a ``probabilities`` object);
* multi_label: ``prediction`` (labels over 0.5; CSV: joined by the run's separator ";"; JSONL:
  a list) and the per-label probabilities;
* regression: ``prediction`` (the value).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from bertjax.data import records
from bertjax.inference import LoadedRun, predict

MULTI_LABEL_JOIN = ";"


def text_columns(run: LoadedRun, text_a: str = "", text_b: str = "") -> tuple[str, str]:
    """The input columns to read: the flags, else those the run trained on."""
    data = run.manifest.get("data") or {}
    a = text_a or data.get("text_column") or ""
    b = text_b or data.get("text_pair_column") or ""
    if not a:
        raise ValueError(f"{run.workdir}: run.json names no text column; pass --text_a")
    return a, b


def predict_file(
    run: LoadedRun,
    input_path: str,
    output_path: str,
    *,
    text_a: str = "",
    text_b: str = "",
    fmt: str = "",
    batch_size: int = 64,
) -> int:
    """Scores every row of `input_path` and writes `output_path` (.csv, .tsv or .jsonl);
    returns the number of rows."""
    table = records.read_table(input_path, fmt)
    col_a, col_b = text_columns(run, text_a, text_b)
    records.check_columns(table, records.Columns(col_a, col_b), need_label=False)
    for row, line in zip(table.rows, table.lines, strict=True):
        for col in (c for c in (col_a, col_b) if c):
            if not str(row.get(col) or "").strip():
                raise records.RecordError(f"{input_path}:{line}: empty text in column {col!r}")
    texts = [str(r[col_a]) for r in table.rows]
    pairs = [str(r[col_b]) for r in table.rows] if col_b else None
    results = predict(run, texts, pairs, batch_size)
    out_fmt = records.file_format(output_path)
    added = _added_columns(run)
    clash = [c for c in added if c in table.columns]
    if clash and out_fmt != "jsonl":
        raise ValueError(f"{input_path}: columns {clash} clash with the prediction columns")
    os.makedirs(os.path.dirname(os.path.abspath(output_path)) or ".", exist_ok=True)
    with open(output_path, "w", encoding="utf-8", newline="") as f:
        if out_fmt == "jsonl":
            for row, result in zip(table.rows, results, strict=True):
                f.write(json.dumps({**row, **_jsonl_fields(run, result)}, ensure_ascii=False))
                f.write("\n")
        else:
            delimiter = "," if out_fmt == "csv" else "\t"
            quoting = csv.QUOTE_MINIMAL if out_fmt == "csv" else csv.QUOTE_NONE
            writer = csv.writer(f, delimiter=delimiter, quoting=quoting, escapechar="\\")
            writer.writerow([*table.columns, *added])
            for row, result in zip(table.rows, results, strict=True):
                fields = [_cell(row.get(c)) for c in table.columns]
                writer.writerow(fields + _flat_fields(run, result))
    return len(results)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _added_columns(run: LoadedRun) -> list[str]:
    if run.problem_type == "regression" or run.label_names is None:
        return ["prediction"]
    probs = [f"p_{n}" for n in run.label_names]
    return (
        ["prediction", *probs]
        if run.problem_type == "multi_label"
        else ["prediction", "score", *probs]
    )


def _jsonl_fields(run: LoadedRun, result: dict[str, Any]) -> dict[str, Any]:
    if "value" in result:
        return {"prediction": result["value"]}
    probs = {n: round(p, 6) for n, p in result["probabilities"].items()}
    if "labels" in result:
        return {"prediction": result["labels"], "probabilities": probs}
    return {
        "prediction": result["label"],
        "score": round(result["score"], 6),
        "probabilities": probs,
    }


def _flat_fields(run: LoadedRun, result: dict[str, Any]) -> list[str]:
    if "value" in result:
        return [f"{result['value']:.6g}"]
    probs = [
        f"{result['probabilities'][n]:.6f}" for n in run.label_names or result["probabilities"]
    ]
    if "labels" in result:
        return [MULTI_LABEL_JOIN.join(result["labels"]), *probs]
    return [result["label"], f"{result['score']:.6f}", *probs]
