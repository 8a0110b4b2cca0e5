"""Entity-level precision / recall / F1 exactly as seqeval's default (conlleval) mode.

Entities are read off IOB1 / IOB2 / IOE / IOBES tag sequences with conlleval's chunk rules
(`end_of_chunk` / `start_of_chunk` below, the same rules seqeval's `get_entities` applies): an
`I-X` after `O` or after another type starts an entity, `E-`/`S-` end one, and a sentence's last
entity ends with the sentence. An entity is (type, first token, last token); a predicted entity
counts when the gold set has the same triple. Scores per type and overall (micro average over
entities), 0.0 where a denominator is 0 (seqeval's zero_division default).
"""

from __future__ import annotations

from collections.abc import Sequence

Entity = tuple[str, int, int]  # (type, first token, last token), token indices inclusive


def _split(tag: str) -> tuple[str, str]:
    # seqeval: the first character is the prefix, the type follows after "-" ("_" if none).
    prefix = tag[:1]
    kind = tag[1:].split("-", maxsplit=1)[-1] or "_"
    return prefix, kind


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether an entity ended at the previous token (conlleval's endOfChunk)."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether an entity starts at the current token (conlleval's startOfChunk)."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str], offset: int = 0) -> list[Entity]:
    """The entities of one sentence's tags (token indices shifted by `offset`)."""
    chunks: list[Entity] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _split(tag)
        if end_of_chunk(prev_tag, prefix, prev_type, kind):
            chunks.append((prev_type, offset + begin, offset + i - 1))
        if start_of_chunk(prev_tag, prefix, prev_type, kind):
            begin = i
        prev_tag, prev_type = prefix, kind
    return chunks


def _prf(correct: int, pred: int, true: int) -> dict[str, float]:
    precision = correct / pred if pred else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": float(true)}


def evaluate(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]
) -> dict[str, dict[str, float]]:
    """{"overall": {precision, recall, f1, support}, TYPE: {...}, ...} of tag sequences.

    gold, pred: one tag list per sentence, the same lengths (a mismatch names the sentence).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    true_set: set[Entity] = set()
    pred_set: set[Entity] = set()
    offset = 0
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        true_set.update(get_entities(g, offset))
        pred_set.update(get_entities(p, offset))
        offset += len(g) + 1  # sentences apart, as seqeval's flattening with an "O" between
    out = {"overall": _prf(len(true_set & pred_set), len(pred_set), len(true_set))}
    for kind in sorted({e[0] for e in true_set | pred_set}):
        t = {e for e in true_set if e[0] == kind}
        p = {e for e in pred_set if e[0] == kind}
        out[kind] = _prf(len(t & p), len(p), len(t))
    return out
