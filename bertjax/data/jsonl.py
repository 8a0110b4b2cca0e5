"""JSON Lines input: one JSON object per line, blank lines skipped, errors naming file and line.

The one reader behind every JSONL input (fine-tuning records, prediction inputs); each caller
passes its own error class so that its command reports the error as it reports other bad input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def objects(
    lines: Iterable[str], path: str, error: type[Exception] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number from 1, object) of each non-blank line of `lines` (the text of `path`).

    Raises `error` naming `path:line` for a line that is not valid JSON or not a JSON object.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def read_objects(
    path: str, error: type[Exception] = ValueError
) -> list[tuple[int, dict[str, Any]]]:
    """`objects` of the file at `path` (UTF-8, a leading byte-order mark ignored)."""
    with open(path, encoding="utf-8-sig") as f:
        return list(objects(f, path, error))
