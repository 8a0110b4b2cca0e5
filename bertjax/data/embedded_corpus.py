"""The embedded default corpus: English prose of the Python documentation shipped with CPython.

Every CPython installation carries `pydoc_data.topics` (the text behind `help("topic")`): about
80 chapters of the Python Language Reference and Library Reference, roughly 450 KB of real
English. That is what makes the quickstart work offline with no download. This module keeps the
prose only: code samples, grammar rules, tables and other indented blocks are removed, each
section (a heading with its paragraphs) becomes one document, and paragraphs are split into
sentences.

The text changes slightly between Python versions; `corpus_fingerprint()` identifies it, and the
pipeline stores the vocabulary it trains next to the run, so a resumed run is unaffected.
"""

from __future__ import annotations

import functools
import hashlib
import re

from bertjax.data.cleaning import Document
from bertjax.data.sentences import split_sentences

_UNDERLINE_RE = re.compile(r"^([*=\-~^\"'#+])\1{2,}\s*$")
_TABLE_RE = re.compile(r"^\s*[+|]")
_LIST_MARKER_RE = re.compile(r"^(?:\d+\.|[*\-]|\(\d+\))\s+")
_FOOTNOTE_RE = re.compile(r"\s*\[\d+\]")
_EMPHASIS_RE = re.compile(r"\*([^*\s][^*]*?)\*")
_GRAMMAR_RE = re.compile(r"::=")


@functools.lru_cache(maxsize=1)
def embedded_documents() -> tuple[tuple[str, ...], ...]:
    """The corpus as documents of sentences (cached; about 0.2 s to build)."""
    from pydoc_data import topics  # stdlib: present in every CPython

    docs: list[Document] = []
    for name in sorted(topics.topics):
        docs.extend(_topic_documents(topics.topics[name]))
    return tuple(tuple(d) for d in docs)


def corpus_fingerprint() -> str:
    """sha256 of the cleaned corpus text (it differs between Python versions)."""
    h = hashlib.sha256()
    for doc in embedded_documents():
        h.update("\n".join(doc).encode("utf-8"))
        h.update(b"\n\n")
    return h.hexdigest()


def _topic_documents(text: str) -> list[Document]:
    """Splits one help topic into sections; each section's prose paragraphs form one document."""
    lines = text.splitlines()
    sections: list[list[str]] = [[]]
    i = 0
    while i < len(lines):
        # A heading is a line underlined by a run of one punctuation character.
        if i + 1 < len(lines) and lines[i].strip() and _UNDERLINE_RE.match(lines[i + 1]):
            sections.append([])
            i += 2
            continue
        sections[-1].append(lines[i])
        i += 1
    docs = []
    for section in sections:
        sentences: list[str] = []
        for paragraph in _paragraphs(section):
            sentences.extend(split_sentences(paragraph))
        if sentences:
            docs.append(sentences)
    return docs


def _paragraphs(lines: list[str]) -> list[str]:
    """Prose paragraphs of a section: blocks of lines that start at column 0."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    out = []
    for block in blocks:
        if not block:
            continue
        first = block[0]
        # Tables start with + or |, grammar productions contain ::=, interactive sessions >>>.
        if _TABLE_RE.match(first) or _GRAMMAR_RE.search(first) or first.lstrip().startswith(">>>"):
            continue
        if first.rstrip().endswith(":") and len(block) == 1:
            # A lone line introducing a code sample ("For example:") says nothing on its own.
            continue
        text = " ".join(line.strip() for line in block)
        text = _LIST_MARKER_RE.sub("", text)
        text = _FOOTNOTE_RE.sub("", text)
        text = _EMPHASIS_RE.sub(r"\1", text)
        # Indented blocks are code samples unless they read as sentences (method descriptions
        # are indented under their signature line in these help texts).
        indented = first[0].isspace()
        if _looks_like_prose(text) and (not indented or _reads_as_sentences(text)):
            out.append(text)
    return out


def _looks_like_prose(text: str) -> bool:
    """Heuristic: mostly letters and spaces, and several words."""
    words = text.split()
    if len(words) < 4:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / len(text) > 0.75


def _reads_as_sentences(text: str) -> bool:
    """Stricter test for indented blocks: capitalised, ends like a sentence, no code symbols."""
    return (
        text[0].isupper()
        and text.endswith((".", "?", "!"))
        and not any(sym in text for sym in ("==", "->", "()", "= ", "{", "}", "\\"))
    )
