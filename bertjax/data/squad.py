"""SQuAD v1.1 / v2.0: the JSON reader and the windows google-research/bert's run_squad.py makes.

    examples, version = read_squad_json("dev-v1.1.json")
    feats, stats = featurize(examples, tokenizer, max_seq_length=384, doc_stride=128,
                             max_query_length=64, training=False)

Each question becomes one or more windows ``[CLS] question [SEP] context piece [SEP]``: the
question is cut to `max_query_length` tokens, the context is covered by windows of the tokens
that remain, each starting `doc_stride` tokens after the last (run_squad's `doc_stride`).
Token character spans come from the tokenizer (`encode_batch_with_offsets`), so answers map
back to the exact characters of the original context. A training window whose answer is not
wholly inside it is labelled with [CLS] (position 0), as run_squad and transformers do; a
question whose answer lies in no window at all is counted in the stats (and logged by the task).

Bad input is an error naming the file and the question id (or article / paragraph index):
malformed JSON, missing fields, an `answer_start` where the context does not hold the answer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

FEATURE_KEYS = ("input_ids", "token_type_ids", "attention_mask")


class SquadDataError(ValueError):
    """A SQuAD file that cannot be read; the message names the file and the question."""


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question: its id, texts, gold answers ((text, char start), ...) and impossibility."""

    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...] = ()
    is_impossible: bool = False


@dataclasses.dataclass
class WindowStats:
    """Counts of one featurisation (logged by the task)."""

    questions: int = 0
    windows: int = 0
    truncated_questions: int = 0  # questions longer than max_query_length tokens
    answer_outside_windows: int = 0  # training: the answer is wholly in no window
    outside_ids: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.questions} questions -> {self.windows} windows; "
            f"{self.truncated_questions} questions cut to max_query_length; "
            f"{self.answer_outside_windows} answers in no window"
        )


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise SquadDataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise SquadDataError(
            f"{where}: field {key!r} is {type(value).__name__}, not {kind.__name__}"
        )
    return value


def parse_squad(data: Any, path: str) -> tuple[list[QAExample], str]:
    """(examples, "1.1" | "2.0") of a parsed SQuAD JSON document (see `read_squad_json`)."""
    articles = _field(data, "data", list, path)
    examples: list[QAExample] = []
    version = "2.0" if str(data.get("version", "")).startswith("v2") else "1.1"
    seen: set[str] = set()
    for a, article in enumerate(articles):
        paragraphs = _field(article, "paragraphs", list, f"{path}: article {a}")
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}: article {a} paragraph {p}"
            context = _field(paragraph, "context", str, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, where)):
                qid = str(_field(qa, "id", (str, int), f"{where} question {q}"))
                at = f"{path}: question {qid}"
                if qid in seen:
                    raise SquadDataError(f"{at}: duplicate question id")
                seen.add(qid)
                question = _field(qa, "question", str, at)
                impossible = bool(qa.get("is_impossible", False))
                if "is_impossible" in qa:
                    version = "2.0"
                answers = []
                for i, ans in enumerate(_field(qa, "answers", list, at)):
                    text = _field(ans, "text", str, f"{at} answer {i}")
                    start = _field(ans, "answer_start", int, f"{at} answer {i}")
                    if context[start : start + len(text)] != text:
                        found = context[start : start + len(text)]
                        raise SquadDataError(
                            f"{at} answer {i}: answer_start={start} does not match the context "
                            f"(the context holds {found!r} there, the answer is {text!r})"
                        )
                    answers.append((text, start))
                if not answers and not impossible:
                    raise SquadDataError(f"{at}: no answers and not is_impossible")
                examples.append(QAExample(qid, question, context, tuple(answers), impossible))
    return examples, version


def read_squad_json(path: str) -> tuple[list[QAExample], str]:
    """(examples in file order, "1.1" | "2.0") of a SQuAD JSON file; errors name the file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SquadDataError(
            f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
        ) from None
    except UnicodeDecodeError as e:
        raise SquadDataError(f"{path}: not UTF-8 ({e})") from None
    if not isinstance(data, dict):
        raise SquadDataError(f"{path}: expected a JSON object with a 'data' list")
    return parse_squad(data, path)


def window_starts(num_tokens: int, window: int, stride: int) -> list[int]:
    """Start tokens of run_squad's doc spans: `window` tokens each, `stride` apart, until the
    last one reaches the end (one empty span for an empty context)."""
    starts, start = [], 0
    while True:
        starts.append(start)
        if start + window >= num_tokens:
            return starts
        start += min(window, stride)


def featurize(
    examples: Sequence[QAExample],
    tokenizer: Any,
    *,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    training: bool,
) -> tuple[dict[str, np.ndarray], WindowStats]:
    """Windows of every question as numpy arrays, plus counts.

    Returns input_ids / token_type_ids / attention_mask [N, max_seq_length] int32,
    start_positions / end_positions [N] int32 (0 = [CLS]: no answer in this window; the first
    answer only), example_index [N] int64 (into `examples`), offsets [N, T, 2] int32 (character
    span in the context of each context token, -1 elsewhere), max_context [N, T] bool (the
    window where the token has the most context on both sides, run_squad's
    `_check_is_max_context`; a span must start on such a token).
    """
    if max_query_length < 1 or doc_stride < 1:
        raise ValueError("max_query_length and doc_stride must be positive")
    questions = tokenizer.encode_batch([e.question for e in examples])
    contexts = tokenizer.encode_batch_with_offsets([e.context for e in examples])
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    stats = WindowStats(questions=len(examples))
    rows: list[tuple] = []
    for ex_index, (ex, q_ids, (c_ids, c_off)) in enumerate(
        zip(examples, questions, contexts, strict=True)
    ):
        if len(q_ids) > max_query_length:
            stats.truncated_questions += 1
            q_ids = q_ids[:max_query_length]
        room = max_seq_length - len(q_ids) - 3
        if room < 1:
            raise ValueError(
                f"max_seq_length={max_seq_length} leaves no room for the context after a "
                f"{len(q_ids)}-token question (max_query_length={max_query_length})"
            )
        starts_arr = np.array([o[0] for o in c_off], np.int64)
        ends_arr = np.array([o[1] for o in c_off], np.int64)
        tok_start = tok_end = -1
        if training and ex.answers and not ex.is_impossible:
            text, char_start = ex.answers[0]
            char_end = char_start + len(text)
            # first token ending after the answer's start, last token starting before its end
            inside = np.nonzero((ends_arr > char_start) & (starts_arr < char_end))[0]
            if len(inside):
                tok_start, tok_end = int(inside[0]), int(inside[-1])
        spans = window_starts(len(c_ids), room, doc_stride)
        best_window = _max_context_windows(spans, room, len(c_ids))
        found = False
        for k, s in enumerate(spans):
            length = min(room, len(c_ids) - s)
            head = [cls, *q_ids, sep]
            ids = [*head, *c_ids[s : s + length], sep]
            offset = len(head)
            start_pos = end_pos = 0
            if tok_start >= 0 and tok_start >= s and tok_end < s + length:
                start_pos, end_pos = tok_start - s + offset, tok_end - s + offset
                found = True
            max_ctx = np.zeros(max_seq_length, bool)
            off = np.full((max_seq_length, 2), -1, np.int32)
            if length > 0:
                off[offset : offset + length, 0] = starts_arr[s : s + length]
                off[offset : offset + length, 1] = ends_arr[s : s + length]
                max_ctx[offset : offset + length] = best_window[s : s + length] == k
            rows.append((ids, offset, start_pos, end_pos, ex_index, off, max_ctx))
        if training and ex.answers and not ex.is_impossible and not found:
            stats.answer_outside_windows += 1
            stats.outside_ids.append(ex.qid)
    stats.windows = len(rows)
    n = len(rows)
    feats = {
        "input_ids": np.full((n, max_seq_length), pad, np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), np.int32),
        "attention_mask": np.zeros((n, max_seq_length), np.int32),
        "start_positions": np.zeros(n, np.int32),
        "end_positions": np.zeros(n, np.int32),
        "example_index": np.zeros(n, np.int64),
        "offsets": np.full((n, max_seq_length, 2), -1, np.int32),
        "max_context": np.zeros((n, max_seq_length), bool),
    }
    for i, (ids, offset, sp, ep, ex_index, off, max_ctx) in enumerate(rows):
        feats["input_ids"][i, : len(ids)] = ids
        feats["token_type_ids"][i, offset : len(ids)] = 1
        feats["attention_mask"][i, : len(ids)] = 1
        feats["start_positions"][i], feats["end_positions"][i] = sp, ep
        feats["example_index"][i] = ex_index
        feats["offsets"][i] = off
        feats["max_context"][i] = max_ctx
    return feats, stats


def _max_context_windows(spans: list[int], room: int, total: int) -> np.ndarray:
    """For each context token, the window that gives it the most context: run_squad's
    _check_is_max_context (score = min(left, right context) + 0.01 x window length, the first
    window on a tie)."""
    starts = np.array(spans, np.int64)[:, None]
    lengths = np.minimum(room, total - starts)
    ends = starts + lengths - 1
    tokens = np.arange(total)[None, :]
    score = np.minimum(tokens - starts, ends - tokens) + 0.01 * lengths
    score = np.where((tokens >= starts) & (tokens <= ends), score, -np.inf)
    return score.argmax(0) if total else np.zeros(0, np.int64)


def _str(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.shape == () else value.tolist()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_tfds(name: str, split: str, data_dir: str | None = None) -> tuple[list[QAExample], str]:
    """(examples, version) of TFDS `squad/v1.1` or `squad/v2.0` through `tfds.data_source`
    (array_record files, no TensorFlow), checked as the JSON reader checks a file."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(
        name, split=split, data_dir=data_dir, builder_kwargs={"file_format": "array_record"}
    )
    paragraphs = []
    for i in range(len(source)):
        row = source[i]
        answers = row.get("answers") or {}
        texts = [_str(t) for t in np.atleast_1d(answers.get("text", []))]
        starts = [int(s) for s in np.atleast_1d(answers.get("answer_start", []))]
        qa = {
            "id": _str(row["id"]),
            "question": _str(row["question"]),
            "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)],
        }
        if "is_impossible" in row:
            qa["is_impossible"] = bool(np.asarray(row["is_impossible"]).item())
        paragraphs.append({"context": _str(row["context"]), "qas": [qa]})
    if not paragraphs:
        raise SquadDataError(f"tfds {name} {split}: no rows (empty split)")
    version = "2.0" if "v2" in name else "1.1"
    examples, found = parse_squad({"version": version, "data": [{"paragraphs": paragraphs}]},
                                  f"tfds {name} {split}")  # fmt: skip
    return examples, found
