"""WordPiece tokenizer: BERT's `vocab.txt` and BasicTokenizer rules, run by Rust `tokenizers`.

`WordPieceTokenizer.from_vocab_file` loads a google-research/bert (or Hugging Face) `vocab.txt`,
validating it first (the special tokens must be present, no duplicates), and
`train_wordpiece_vocab` learns a new vocabulary from text deterministically.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from tokenizers.implementations import BertWordPieceTokenizer

from bertjax.data import vocab_trainer

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Order of the specials in a trained vocabulary: [PAD] gets id 0 as in BERT's own vocabularies.
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
_UNUSED_RE = re.compile(r"^\[unused\d+\]$")


class VocabError(ValueError):
    """A vocabulary file that cannot serve BERT pretraining (missing specials, duplicates...)."""


def read_vocab_file(path: str) -> list[str]:
    """Reads a `vocab.txt` (one token per line, id = line number) and validates it.

    Raises:
      FileNotFoundError: the file does not exist.
      VocabError: the file is empty, has duplicate tokens (line numbers given) or lacks one of
        [PAD], [UNK], [CLS], [SEP], [MASK].
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            # BERT's load_vocab strips each line: vocabularies with trailing spaces load.
            vocab = [line.strip() for line in f]
        except UnicodeDecodeError as e:
            raise VocabError(
                f"vocabulary file {path!r} is not UTF-8 (byte offset {e.start})"
            ) from e
    while vocab and not vocab[-1]:
        vocab.pop()  # a trailing newline at the end of the file is not a token
    if not vocab:
        raise VocabError(f"vocabulary file {path!r} is empty")
    seen: dict[str, int] = {}
    for line_no, token in enumerate(vocab, start=1):
        if token in seen:
            raise VocabError(
                f"vocabulary file {path!r}: token {token!r} on line {line_no} duplicates line "
                f"{seen[token]}"
            )
        seen[token] = line_no
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise VocabError(
            f"vocabulary file {path!r} lacks the special token(s) {', '.join(missing)}; BERT "
            f"pretraining needs all of {', '.join(SPECIAL_TOKENS)}"
        )
    return vocab


class WordPieceTokenizer:
    """BERT WordPiece tokenization (BasicTokenizer cleaning/lower-casing, then greedy WordPiece).

    Attributes:
      vocab: the tokens, index = id.
      pad_id, unk_id, cls_id, sep_id, mask_id: the special token ids.
      do_lower_case: uncased (lower-case + strip accents) or cased, as BERT's BasicTokenizer.
    """

    def __init__(self, vocab: Sequence[str], *, do_lower_case: bool, source: str = "<memory>"):
        self.vocab = list(vocab)
        self.do_lower_case = bool(do_lower_case)
        self.source = source
        ids = {tok: i for i, tok in enumerate(self.vocab)}
        missing = [t for t in SPECIAL_TOKENS if t not in ids]
        if missing:
            raise VocabError(
                f"vocabulary {source!r} lacks the special token(s) {', '.join(missing)}"
            )
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            ids[t] for t in SPECIAL_TOKENS
        )
        # strip_accents=None follows lowercase, exactly BERT's uncased/cased BasicTokenizer.
        self._impl = BertWordPieceTokenizer(ids, lowercase=self.do_lower_case)
        self._impl.no_padding()
        self._impl.no_truncation()

    @classmethod
    def from_vocab_file(cls, path: str, *, do_lower_case: bool) -> WordPieceTokenizer:
        """Loads and validates a `vocab.txt` (see `read_vocab_file`)."""
        return cls(read_vocab_file(path), do_lower_case=do_lower_case, source=path)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> np.ndarray:
        """Ids of [PAD], [UNK], [CLS], [SEP], [MASK]."""
        return np.array(
            [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id], np.int32
        )

    def is_subword_table(self) -> np.ndarray:
        """bool[vocab_size]: True for continuation pieces (`##...`), used by whole-word masking."""
        return np.array([t.startswith("##") for t in self.vocab], dtype=bool)

    def random_replacement_ids(self) -> np.ndarray:
        """Ids that masking may substitute as "random token": everything but specials/[unusedN]."""
        specials = set(SPECIAL_TOKENS)
        keep = [
            i for i, t in enumerate(self.vocab) if t not in specials and not _UNUSED_RE.match(t)
        ]
        if not keep:
            raise VocabError(f"vocabulary {self.source!r} has no ordinary tokens")
        return np.array(keep, dtype=np.int32)

    def fingerprint(self) -> str:
        """sha256 of the vocabulary and casing: two tokenizers with the same one encode alike."""
        h = hashlib.sha256(("cased" if not self.do_lower_case else "uncased").encode())
        h.update("\n".join(self.vocab).encode("utf-8"))
        return h.hexdigest()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]."""
        return self._impl.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no specials); runs in parallel in Rust."""
        if not texts:
            return []
        return [e.ids for e in self._impl.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, character spans [start, end) in the original text) of each text, no specials.

        Question answering and tagging map tokens back to the text with these spans.
        """
        if not texts:
            return []
        out = self._impl.encode_batch(list(texts), add_special_tokens=False)
        return [(e.ids, [tuple(o) for o in e.offsets]) for e in out]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids` with `##` pieces glued back to their word."""
        return self._impl.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save_vocab(self, path: str) -> None:
        """Writes `vocab.txt` atomically (temp file + rename), so readers never see half a file."""
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(self.vocab) + "\n")
        os.replace(tmp, path)


def train_wordpiece_vocab(
    texts: Iterable[str],
    *,
    vocab_size: int,
    do_lower_case: bool,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> list[str]:
    """Learns a WordPiece vocabulary (specials first: [PAD]=0, [UNK], [CLS], [SEP], [MASK]).

    Deterministic: the same texts give the same vocabulary in every process (see
    `bertjax.data.vocab_trainer` for why the `tokenizers` trainer is not used for the merges).
    """
    counts = vocab_trainer.count_words(texts, do_lower_case=do_lower_case)
    return train_wordpiece_vocab_from_counts(
        counts, vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=limit_alphabet
    )


def train_wordpiece_vocab_from_counts(
    counts: Mapping[str, int],
    *,
    vocab_size: int,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> list[str]:
    """`train_wordpiece_vocab` from word frequencies (`vocab_trainer.count_words`), which can be
    counted in parallel and summed: the Beam prepare pipeline trains its vocabulary this way."""
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    counts = Counter(counts)
    if not counts:
        raise ValueError("cannot train a vocabulary: the text has no words")
    return vocab_trainer.train_from_word_counts(
        counts,
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        min_frequency=min_frequency,
        limit_alphabet=limit_alphabet,
    )
