"""Rule-based sentence splitting for plain-paragraph text (no model, no download).

Good enough for building next-sentence pairs: it splits after `.`, `!` or `?` (optionally followed
by closing quotes/brackets) when whitespace and an upper-case letter, digit or opening quote
follow, and it does not split after common abbreviations ("e.g.", "Dr.") or single initials.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig figs eq no nos vol vols ed eds
    approx dept est inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec
    u.s u.k a.m p.m ph.d""".split()
)
# Candidate boundary: terminal punctuation, optional closers, whitespace, then a sentence opener.
_BOUNDARY_RE = re.compile(r"""([.!?]+["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]?[A-Z0-9])""")
_LAST_WORD_RE = re.compile(r"(\S+)$")


def split_sentences(paragraph: str) -> list[str]:
    """Splits one paragraph into sentences; whitespace inside the paragraph is collapsed."""
    text = " ".join(paragraph.split())
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(text):
        end = m.end(1)
        if m.group(1).startswith(".") and _is_abbreviation(text[start:end]):
            continue
        sentences.append(text[start:end].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


def _is_abbreviation(chunk: str) -> bool:
    m = _LAST_WORD_RE.search(chunk)
    if not m:
        return False
    word = m.group(1).rstrip(".").lstrip("(\"'").lower()
    # A single letter ("J. Smith") is an initial, not a sentence end.
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())
