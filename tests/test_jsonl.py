"""Every JSON Lines input (fine-tuning records, GLUE-run and span-run prediction inputs) reads
through `bertjax.data.jsonl`: blank lines skipped, a byte-order mark ignored, and a bad line an
error of the caller's kind naming file and line."""

from __future__ import annotations

import pytest

from bertjax import predict, predict_spans
from bertjax.data import glue, jsonl, records


def test_objects_skip_blank_lines_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('\ufeff{"text": "a"}\n\n  \n{"text": "b"}\n', encoding="utf-8")
    assert jsonl.read_objects(str(path)) == [(1, {"text": "a"}), (4, {"text": "b"})]
    rows = predict._read_jsonl(str(path), glue.get_task("sst2"), "text", "")
    assert [r.text_a for r in rows] == ["a", "b"]
    assert [row for _, row in predict_spans.read_jsonl(str(path))][1] == {"text": "b"}


@pytest.mark.parametrize(
    "body, line, why",
    [
        ('{"text": "a"}\n{"text": \n', 2, "not valid JSON"),
        ('{"text": "a"}\n\n["text"]\n', 3, "expected a JSON object, got list"),
    ],
)
def test_each_reader_names_file_and_line_with_its_own_error(tmp_path, body, line, why):
    path = tmp_path / "in.jsonl"
    path.write_text(body, encoding="utf-8")
    where = f"in.jsonl:{line}: {why}"
    with pytest.raises(records.RecordError, match=where):
        records.read_table(str(path))
    with pytest.raises(glue.GlueDataError, match=where):
        predict._read_jsonl(str(path), glue.get_task("sst2"), "text", "")
    with pytest.raises(predict_spans.InputError, match=where):
        predict_spans.read_jsonl(str(path))
