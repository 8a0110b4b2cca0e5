"""Token-tagging files (CoNLL-2003 and two-column token/tag files) and their BERT features.

    sentences = read_conll("train.txt")              # tags converted to IOB2
    names = tag_names(sentences)                     # "O" first, then sorted
    feats = featurize(sentences, tokenizer, {n: i for i, n in enumerate(names)}, 128)

Files: one token per line, the token in the first column and the tag in the last (columns
split on white space, so CoNLL-2003's four columns and WNUT/WikiANN's two both read); blank
lines end sentences; ``-DOCSTART-`` lines (and the blank line after them) are skipped. Every
line of a file has the same number of columns. Tags are IOB1, IOB2 or IOBES (`tag_scheme`
"auto" accepts any of them) and are converted to IOB2: S-X -> B-X, E-X -> I-X, and an I-X that
does not continue an X entity -> B-X (IOB1's reading, which is also conlleval's). Errors name
the file and line: a wrong number of columns, a tag outside the scheme.

Features label the first word piece of each word and ignore the others (label -1), as the BERT
paper's NER setup; a sentence longer than max_seq_length - 2 pieces is split into several rows
between words (a word longer than a whole row keeps its first pieces only).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SCHEMES = ("auto", "iob1", "iob2", "iobes")
IGNORE = -1  # label of pieces that are not a word's first
_TAG = re.compile(r"^([BIES])-(.+)$")


class ConllDataError(ValueError):
    """A tagging file that cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Sentence:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]  # IOB2
    line: int  # line of the first token (1-based)


def to_iob2(tags: Sequence[str], where: Sequence[str], scheme: str = "auto") -> list[str]:
    """IOB2 tags of a sentence in IOB1 / IOB2 / IOBES; `where[i]` names tag i in errors."""
    out: list[str] = []
    for tag, at in zip(tags, where, strict=True):
        if tag == "O":
            out.append("O")
            continue
        m = _TAG.match(tag)
        if m is None:
            raise ConllDataError(
                f"{at}: tag {tag!r} is not O or B-/I-/E-/S-TYPE (IOB1, IOB2 or IOBES tags)"
            )
        prefix, kind = m.groups()
        if prefix in "ES" and scheme in ("iob1", "iob2"):
            raise ConllDataError(f"{at}: tag {tag!r} is not in the {scheme} scheme")
        prev = out[-1] if out else "O"
        continues = prev != "O" and prev[2:] == kind
        if prefix == "S" or prefix == "B":
            out.append(f"B-{kind}")
        else:  # I or E: inside if it continues an entity of its type, else it starts one
            out.append(f"I-{kind}" if continues else f"B-{kind}")
    return out


def read_conll(path: str, tag_scheme: str = "auto") -> list[Sentence]:
    """The sentences of a CoNLL / two-column file, tags converted to IOB2."""
    if tag_scheme not in SCHEMES:
        raise ValueError(f"tag_scheme={tag_scheme!r}: expected one of {SCHEMES}")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    width = 0

    def flush():
        if tokens:
            where = [f"{path}:{n}" for n in lines]
            sentences.append(
                Sentence(tuple(tokens), tuple(to_iob2(tags, where, tag_scheme)), lines[0])
            )
            tokens.clear(), tags.clear(), lines.clear()

    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    flush()
                    continue
                if fields[0] == "-DOCSTART-":
                    flush()
                    continue
                if width == 0:
                    width = len(fields)
                    if width < 2:
                        raise ConllDataError(
                            f"{path}:{line_no}: one column; expected a token and a tag"
                        )
                if len(fields) != width:
                    raise ConllDataError(
                        f"{path}:{line_no}: {len(fields)} columns, expected {width} like line "
                        "1 of the data (token first, tag last)"
                    )
                tokens.append(fields[0])
                tags.append(fields[-1])
                lines.append(line_no)
    except UnicodeDecodeError as e:
        raise ConllDataError(f"{path}: not UTF-8 ({e})") from None
    flush()
    if not sentences:
        raise ConllDataError(f"{path}: no sentences")
    return sentences


def tag_names(sentences: Sequence[Sentence]) -> list[str]:
    """The tag set of (training) sentences: "O" first, then by type, B- before I-."""
    tags = {t for s in sentences for t in s.tags} - {"O"}
    return ["O", *sorted(tags, key=lambda t: (t[2:], t[0]))]


def featurize_words(
    words: Sequence[Sequence[str]],
    tokenizer: Any,
    max_seq_length: int,
    tags: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Rows of word pieces of each word list (see the module docstring).

    Returns input_ids / token_type_ids / attention_mask / labels / word_index [N, T] int32
    (labels: the tag id on first pieces, -1 elsewhere or without `tags`; word_index: the word's
    index in its sentence on first pieces, -1 elsewhere), sentence_index [N] int64.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length={max_seq_length} is too short")
    flat = [w for ws in words for w in ws]
    pieces = tokenizer.encode_batch(flat) if flat else []
    room = max_seq_length - 2
    rows: list[tuple[list[int], list[int], list[int], int]] = []
    k = 0
    for s_index, ws in enumerate(words):
        ids: list[int] = []
        labels: list[int] = []
        word_index: list[int] = []
        for w in range(len(ws)):
            p = list(pieces[k]) or [tokenizer.unk_id]
            k += 1
            p = p[:room]
            if len(ids) + len(p) > room:
                rows.append((ids, labels, word_index, s_index))
                ids, labels, word_index = [], [], []
            ids.extend(p)
            labels.extend(
                [tags[s_index][w] if tags is not None else IGNORE] + [IGNORE] * (len(p) - 1)
            )
            word_index.extend([w] + [IGNORE] * (len(p) - 1))
        rows.append((ids, labels, word_index, s_index))
    n = len(rows)
    feats = {
        "input_ids": np.full((n, max_seq_length), tokenizer.pad_id, np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), np.int32),
        "attention_mask": np.zeros((n, max_seq_length), np.int32),
        "labels": np.full((n, max_seq_length), IGNORE, np.int32),
        "word_index": np.full((n, max_seq_length), IGNORE, np.int32),
        "sentence_index": np.zeros(n, np.int64),
    }
    for i, (ids, labels, word_index, s_index) in enumerate(rows):
        length = len(ids) + 2
        feats["input_ids"][i, :length] = [tokenizer.cls_id, *ids, tokenizer.sep_id]
        feats["attention_mask"][i, :length] = 1
        feats["labels"][i, 1 : length - 1] = labels
        feats["word_index"][i, 1 : length - 1] = word_index
        feats["sentence_index"][i] = s_index
    return feats


def featurize(
    sentences: Sequence[Sentence],
    tokenizer: Any,
    label_to_id: Mapping[str, int],
    max_seq_length: int,
) -> tuple[dict[str, np.ndarray], int]:
    """(features of labelled sentences, words whose tag is not in `label_to_id`: label -1)."""
    unknown = 0
    ids = []
    for s in sentences:
        row = []
        for t in s.tags:
            if t not in label_to_id:
                unknown += 1
            row.append(label_to_id.get(t, IGNORE))
        ids.append(row)
    return featurize_words([s.tokens for s in sentences], tokenizer, max_seq_length, ids), unknown


def words_from_rows(
    feats: Mapping[str, np.ndarray], values: np.ndarray, num_words: Sequence[int]
) -> list[np.ndarray]:
    """Per sentence, `values` [N, T, ...] at each word's first piece (word order)."""
    out = [np.zeros((n, *values.shape[2:]), values.dtype) for n in num_words]
    seen = [np.zeros(n, bool) for n in num_words]
    rows, cols = np.nonzero(feats["word_index"] >= 0)
    for r, c in zip(rows, cols, strict=True):
        s = int(feats["sentence_index"][r])
        w = int(feats["word_index"][r, c])
        out[s][w] = values[r, c]
        seen[s][w] = True
    missing = [i for i, m in enumerate(seen) if not m.all()]
    if missing:
        raise ValueError(f"sentences {missing[:5]} have words without a prediction")
    return out
