"""Rule-based sentence splitting for plain-paragraph text (no model, no download).

Good enough for building next-sentence pairs, in English, Chinese (also Japanese/Korean) and text
that mixes them. A sentence ends at a run of terminators, optionally followed by closing quotes or
brackets, which stay with the sentence they close:

* Chinese terminators `。！？；` (and the half-width `｡`), alone or in runs like `！？`, `？！`,
  `。。。`, end a sentence whatever follows, unless a clause mark (`，、：,:`) follows, as in
  `“好！”，他说`.
* Half-width `. ! ? ;`, the ellipsis `…`/`……` and the full-width `．` written next to CJK text
  (a CJK character just before them or starting the next sentence) end a sentence too, with or
  without a space after: `不行.摄像头`, `Good!下次`, `一般……下次`. Not a `.` after a digit
  (`1.接电源` is an enumerator) nor after an abbreviation (`Dr.王`).
* A space between two Han/kana characters (after a closing bracket too) separates sentences:
  such text has no spaces between words, and informal writing uses one in place of a full stop.
* Between non-CJK text the English rule holds: `.`, `!` or `?` (optionally followed by closing
  quotes/brackets) end a sentence when whitespace and an upper-case letter, digit or opening
  quote follow, but not after common abbreviations ("e.g.", "Dr.") or single initials; so
  decimals (`3.5寸`), URLs and `a; b` never split.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig figs eq no nos vol vols ed eds
    approx dept est inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec
    u.s u.k a.m p.m ph.d""".split()
)
# Ideographs (basic, extension A, compatibility, extensions B+), kana and Hangul: scripts whose
# sentences are not separated by a space and a capital letter.
_CJK = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    "\uff66-\uff9f\U00020000-\U0003134f"
)
_CJK_RE = re.compile(f"[{_CJK}]")
# Han and kana: text written without spaces between words, so a space between two of these
# characters separates sentences (`看了很失望 写得不生动`). Hangul is left out: Korean puts
# spaces between words.
_HAN_KANA = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# Terminators that only CJK text uses: they end a sentence whatever script follows.
_CJK_TERMINATORS = "\u3002\uff01\uff1f\uff1b\uff61"  # 。！？；｡
_ELLIPSIS = "\u2026\u22ef"  # … ⋯
# `．` (full-width full stop) is also a decimal point and a URL dot: it is treated as `.`.
_DOTS = ".\uff0e"
_ENGLISH_TERMINATORS = _DOTS + "!?\u203c\u2047\u2048\u2049"  # also ‼ ⁇ ⁈ ⁉
_CLOSERS = "\"'\u201d\u2019)\\]}\u300d\u300f\uff09\u3011\u300b\u3009\u3015\uff3d\uff63\u00bb"
_OPENERS = "\"'\u201c\u2018(\\[{\u300c\u300e\uff08\u3010\u300a\u3008\u3014\uff3b\uff62\u00ab"
# A clause mark after a terminator run means the sentence goes on (`“好！”，他说`).
_CONTINUATION = ",:\uff0c\u3001\uff1a"  # , : ， 、 ：
_CANDIDATE_RE = re.compile(
    f"(?P<run>[{re.escape(_CJK_TERMINATORS + _ELLIPSIS + _ENGLISH_TERMINATORS)};]+)"
    f"(?P<close>[{_CLOSERS}]*)(?P<ws>\\s*)"
)
_ENGLISH_OPENER_RE = re.compile(f"[{_OPENERS}]?[A-Z0-9]")
_LAST_WORD_RE = re.compile(r"(\S+)$")
_HAN_SPACE_RE = re.compile(
    f"(?<=[{_HAN_KANA}\u300d\u300f\uff09\u3011\u300b]) (?=[{_OPENERS}]*[{_HAN_KANA}])"
)


def split_sentences(paragraph: str) -> list[str]:
    """Splits one paragraph into sentences; whitespace inside the paragraph is collapsed."""
    text = " ".join(paragraph.split())
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for m in _CANDIDATE_RE.finditer(text):
        if m.end() >= len(text) or not _is_boundary(text, start, m):
            continue
        sentences.extend(_HAN_SPACE_RE.split(text[start : m.end("close")].strip()))
        start = m.end()
    sentences.extend(_HAN_SPACE_RE.split(text[start:].strip()))
    return [s for s in sentences if s]


def _is_boundary(text: str, start: int, m: re.Match[str]) -> bool:
    """Whether the terminator run `m` (with its closers and spaces) ends the sentence at `start`."""
    run, ws = m.group("run"), m.group("ws")
    following = text[m.end() :]
    # What the next sentence would start with, past opening quotes/brackets.
    first = following.lstrip(_OPENERS)[:1] or following[:1]
    before = text[m.start() - 1] if m.start() > 0 else ""
    if first and first in _CONTINUATION:
        return False
    cjk_before, cjk_after = bool(_CJK_RE.match(before)), bool(_CJK_RE.match(first))
    if any(c in _CJK_TERMINATORS for c in run):
        return True
    if cjk_before or cjk_after:
        if run[0] in _DOTS and not cjk_before:
            # `1.接电源`: an enumerator; `Dr.王`: an abbreviation; neither ends a sentence.
            return not (before.isdigit() or _is_abbreviation(text[start : m.end("run")]))
        return True
    # Neither side is CJK: the English rule (`;` and a lone ellipsis never end a sentence here).
    if not ws or not set(run) <= set(_ENGLISH_TERMINATORS):
        return False
    if not _ENGLISH_OPENER_RE.match(following):
        return False
    return not (run[0] in _DOTS and _is_abbreviation(text[start : m.end("close")]))


def _is_abbreviation(chunk: str) -> bool:
    # The last word, cut at the last CJK character (`我见了Dr.` -> `Dr.`).
    chunk = _CJK_RE.split(chunk)[-1]
    m = _LAST_WORD_RE.search(chunk)
    if not m:
        return False
    word = m.group(1).rstrip(".").lstrip("(\"'").lower()
    # A single letter ("J. Smith") is an initial, not a sentence end.
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())
