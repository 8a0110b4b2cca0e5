"""`python -m bertjax.predict` for span tasks: answers (squad runs) and entities (ner runs).

    python -m bertjax.predict --workdir=runs/squad --input=questions.jsonl --output=answers.jsonl
    python -m bertjax.predict --workdir=runs/ner --input=texts.jsonl --output=entities.jsonl

Input: JSON lines. squad: {"question": ..., "context": ...} (other keys with --text_a /
--text_b); ner: {"text": ...} (or --text_a), or {"tokens": [...]} already split into words.
Every input field is kept, in input order; added: squad ``answer``, ``start``, ``end``
(character offsets in the context; -1 for no answer), ``score`` and ``n_best``; ner
``entities``, a list of {"type", "start", "end", "text", "score"} with character offsets in the
text (for "tokens" input: also "first_token" / "last_token").
"""

from __future__ import annotations

import json
from typing import Any

from bertjax.data import jsonl
from bertjax.inference import ner as ner_inference
from bertjax.inference import qa as qa_inference


class InputError(ValueError):
    """A bad input line; the message names the file and line."""


def read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line."""
    return jsonl.read_objects(path, InputError)


def _text(path: str, line_no: int, row: dict[str, Any], key: str) -> str:
    if key not in row:
        raise InputError(f"{path}:{line_no}: no field {key!r} (fields: {sorted(row)})")
    if not isinstance(row[key], str):
        raise InputError(f"{path}:{line_no}: field {key!r} is not a string")
    return row[key]


def predict_file(
    run: Any, input_path: str, output_path: str, *, text_a: str = "", text_b: str = "",
    batch_size: int = 32,
) -> int:  # fmt: skip
    """Writes the predictions of every line of `input_path` to `output_path` (JSONL)."""
    if not output_path.endswith((".jsonl", ".json", ".ndjson")):
        raise ValueError(f"--output={output_path}: span predictions are written as .jsonl")
    rows = read_jsonl(input_path)
    task = run.manifest["task"]
    if task == "squad":
        qk, ck = text_a or "question", text_b or "context"
        questions = [_text(input_path, n, r, qk) for n, r in rows]
        contexts = [_text(input_path, n, r, ck) for n, r in rows]
        answers = qa_inference.predict(run, questions, contexts, batch_size)
        out = [
            {**r, "answer": a["text"], "start": a["start"], "end": a["end"],
             "score": a["score"], "n_best": a["n_best"]}
            for (_, r), a in zip(rows, answers, strict=True)
        ]  # fmt: skip
    elif task == "ner":
        key = text_a or "text"
        tokens_rows = [r for _, r in rows if "tokens" in r and key not in r]
        if tokens_rows and len(tokens_rows) != len(rows):
            raise InputError(f"{input_path}: mix of {key!r} and 'tokens' lines; use one kind")
        if tokens_rows:
            for n, r in rows:
                if not (
                    isinstance(r["tokens"], list) and all(isinstance(t, str) for t in r["tokens"])
                ):
                    raise InputError(f"{input_path}:{n}: 'tokens' must be a list of strings")
            results = ner_inference.predict_tokens(run, [r["tokens"] for _, r in rows], batch_size)
        else:
            texts = [_text(input_path, n, r, key) for n, r in rows]
            results = ner_inference.predict(run, texts, batch_size)
        out = [{**r, "entities": e} for (_, r), e in zip(rows, results, strict=True)]
    else:
        raise ValueError(f"{run.workdir} is a {task} run, not a squad or ner run")
    with open(output_path, "w", encoding="utf-8") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(out)
