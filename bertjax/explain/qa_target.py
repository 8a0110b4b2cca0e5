"""The answer span a QA explanation looks at, and the window of the context that holds it.

A squad run reads a question with its context in run_squad's windows (`bertjax.inference.qa`:
max_seq_length tokens, doc_stride apart). An attribution needs one model input, so the
explanation reads the window that holds the whole target span: the one where its first token
has the most context (the window postprocessing took the span from), else any window holding
both ends. A span no window holds entirely is an error naming the lengths. Tokens of the
context outside that window get no attribution.

The target span is, by default, the run's predicted answer (for SQuAD 2.0 runs predicting "no
answer", the best non-null span, noted in the target); or given by character offsets in the
context (snapped outwards to whole tokens, as training labels answers); or by token positions
in the input (a context of one window only, so that the positions are unambiguous).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bertjax.explain.targets import Selection, trim
from bertjax.inference import qa as qa_inference

SCORE_NAMES = {"span": "start_logit + end_logit", "start": "start_logit", "end": "end_logit"}


def _window_of_chars(
    run: Any, context: str, feats: dict[str, np.ndarray], start: int, end: int
) -> tuple[int, int, int]:
    """(row, first token, last token) of the window holding the characters [start, end):
    every context token overlapping them (snapped outwards to whole tokens)."""
    _, spans = run.tokenizer.encode_batch_with_offsets([context])[0]
    wanted = {(int(s), int(e)) for s, e in spans if e > start and s < end}
    if not wanted:
        raise ValueError(f"characters {start}-{end} of the context hold no token")
    holding = []
    for row, offsets in enumerate(feats["offsets"]):
        here = [i for i, (s, e) in enumerate(offsets) if s >= 0 and (int(s), int(e)) in wanted]
        if len(here) == len(wanted):
            holding.append((row, here[0], here[-1]))
    if not holding:
        raise ValueError(
            f"the answer span (characters {start}-{end}, {len(wanted)} tokens) is not inside "
            f"one window of the context: a window holds max_seq_length={run.max_seq_length} "
            "tokens with the question; give a shorter context or a span within one window"
        )
    # The window where the span's first token has the most context (postprocessing's choice).
    return next((h for h in holding if feats["max_context"][h[0], h[1]]), holding[0])


def select(
    run: Any,
    question: str,
    context: str,
    *,
    answer: tuple[int, int] | None = None,
    answer_tokens: tuple[int, int] | None = None,
    pad_to: int | None = None,
) -> Selection:
    """The window and target span of a question about `context` (see the module docstring).

    answer: (start, end) character offsets in the context, end exclusive.
    answer_tokens: (first, last) token positions in the explained input (inclusive).
    Raises ValueError naming the flag and the valid range when they are out of range.
    """
    if not question.strip() or not context.strip():
        raise ValueError("a QA run explains a question about a context: give both")
    if answer is not None and answer_tokens is not None:
        raise ValueError("give the answer by characters or by tokens, not both")
    feats, examples = qa_inference.featurize(run, [question], [context])
    starts, ends = qa_inference.logits(run, feats)
    prediction = qa_inference.postprocess(
        examples, feats, starts, ends, **qa_inference.settings(run)
    )[0]
    windows = len(feats["input_ids"])
    note = None
    if answer_tokens is not None:
        if windows > 1:
            raise ValueError(
                f"--answer_tokens: the context takes {windows} windows of max_seq_length="
                f"{run.max_seq_length}, so token positions are ambiguous; give the answer by "
                "characters (--answer_start/--answer_end)"
            )
        row, (first, last) = 0, answer_tokens
        in_context = np.flatnonzero(feats["offsets"][0, :, 0] >= 0)
        lo, hi = int(in_context[0]), int(in_context[-1])
        if not lo <= first <= last <= hi:
            raise ValueError(
                f"--answer_tokens={first},{last}: the context's tokens are positions {lo}-{hi} "
                "of the input (first <= last)"
            )
    else:
        if answer is None:
            best = prediction if prediction["start"] >= 0 else None
            if best is None and prediction["n_best"]:
                best = prediction["n_best"][0]
                note = "the run predicts no answer; explaining its best span"
            if best is None:
                raise ValueError("the run found no answer span to explain; give one")
            answer = (int(best["start"]), int(best["end"]))
        start, end = answer
        if not 0 <= start < end <= len(context):
            raise ValueError(
                f"--answer_start={start} --answer_end={end}: need 0 <= start < end <= "
                f"{len(context)} (the context's length in characters)"
            )
        row, first, last = _window_of_chars(run, context, feats, start, end)
    offsets = feats["offsets"][row]
    length = int(feats["attention_mask"][row].sum())
    char_start, char_end = int(offsets[first, 0]), int(offsets[last, 1])
    target = {
        "kind": "answer_span",
        "text": context[char_start:char_end],
        "start": char_start,
        "end": char_end,
        "token_start": int(first),
        "token_end": int(last),
        "window": int(row),
        "windows": windows,
    }
    if note:
        target["note"] = note
    extra = (np.int32(first), np.int32(last))
    return Selection(trim(feats, row, length, pad_to), length, prediction, target, extra)
