"""Pretraining instances: google-research/bert's `create_pretraining_data.py`, on token spans.

The port keeps the reference algorithm (per document: a target length, shortened with
probability `short_seq_prob`; sentences accumulate into a chunk until the target is reached;
segment A is a random number of whole leading sentences; B is the rest of the chunk or, half of
the time, a span of another document, in which case the unused sentences are put back;
`truncate_seq_pair` trims the longer segment from a random end). One observation makes it fast:
every segment is a contiguous run of one document's tokens, even after truncation. So an
instance is five integers (A start/length, B start/length, label) into one flat token array,
and a batch is assembled with a single vectorised gather (`assemble_batch`).

Sentence objectives:
  * "nsp": BERT's next-sentence prediction, label 1 = B is a random span ("NotNext").
  * "sop": ALBERT's sentence order, label 1 = A and B swapped (ALBERT's code also falls back to a
    random-document B, labelled 1, when a chunk holds a single sentence; kept as in the reference).
  * "none": RoBERTa's DOC-SENTENCES: one segment of whole sentences of one document, label 0.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np

OBJECTIVES = ("nsp", "sop", "none")


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """Documents of sentences of token ids, flattened.

    Attributes:
      tokens: int32[num_tokens], every sentence's ids back to back.
      sentence_starts: int64[num_sentences + 1], offsets of the sentences in `tokens`.
      document_starts: int64[num_documents + 1], offsets of the documents in the sentence list.
    """

    tokens: np.ndarray
    sentence_starts: np.ndarray
    document_starts: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.document_starts) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_starts) - 1

    @classmethod
    def from_token_lists(cls, documents: Sequence[Sequence[Sequence[int]]]) -> TokenizedCorpus:
        """Builds the corpus from documents of sentences of ids (empty ones are skipped)."""
        sentence_lengths: list[int] = []
        doc_starts = [0]
        pieces: list[Sequence[int]] = []
        for doc in documents:
            kept = [s for s in doc if len(s)]
            if not kept:
                continue
            pieces.extend(kept)
            sentence_lengths.extend(len(s) for s in kept)
            doc_starts.append(len(sentence_lengths))
        tokens = (
            np.fromiter((t for s in pieces for t in s), dtype=np.int32, count=sum(sentence_lengths))
            if pieces
            else np.zeros(0, np.int32)
        )
        starts = np.zeros(len(sentence_lengths) + 1, np.int64)
        np.cumsum(sentence_lengths, out=starts[1:])
        return cls(tokens, starts, np.asarray(doc_starts, np.int64))

    @staticmethod
    def concatenate(parts: Sequence[TokenizedCorpus]) -> TokenizedCorpus:
        """One corpus holding the documents of `parts`, in order."""
        if not parts:
            return TokenizedCorpus.from_token_lists([])
        tokens = np.concatenate([p.tokens for p in parts])
        token_offsets = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
        sentence_offsets = np.cumsum([0] + [p.num_sentences for p in parts[:-1]])
        sentence_starts = np.concatenate(
            [p.sentence_starts[:-1] + o for p, o in zip(parts, token_offsets, strict=True)]
            + [np.array([len(tokens)], np.int64)]
        )
        document_starts = np.concatenate(
            [p.document_starts[:-1] + o for p, o in zip(parts, sentence_offsets, strict=True)]
            + [np.array([len(sentence_starts) - 1], np.int64)]
        )
        return TokenizedCorpus(tokens, sentence_starts, document_starts)


@dataclasses.dataclass(frozen=True)
class InstanceSpans:
    """Instances as spans into a flat token array (all int64[n] except `label`, int32[n])."""

    a_start: np.ndarray
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.a_start)

    def take(self, idx: np.ndarray | slice) -> InstanceSpans:
        return InstanceSpans(
            self.a_start[idx], self.a_len[idx], self.b_start[idx], self.b_len[idx], self.label[idx]
        )

    @staticmethod
    def concatenate(parts: Sequence[InstanceSpans]) -> InstanceSpans:
        return InstanceSpans(
            *(
                np.concatenate([getattr(p, f.name) for p in parts])
                for f in dataclasses.fields(parts[0])
            )
        )


def truncated_lengths(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
    """Lengths after google-research/bert's `truncate_seq_pair`, in closed form.

    The reference removes one token at a time from the longer segment (from B on a tie) until the
    pair fits; this computes where that loop ends without looping.
    """
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return len_a, len_b
    if len_a > len_b:
        # A shrinks until it equals B, then B and A alternate, B first.
        d = min(excess, len_a - len_b)
        len_a -= d
        excess -= d
        return len_a - excess // 2, len_b - (excess + 1) // 2
    # B shrinks while it is >= A, i.e. until it is A - 1, then A and B alternate, A first.
    d = min(excess, len_b - len_a + 1)
    len_b -= d
    excess -= d
    return len_a - (excess + 1) // 2, len_b - excess // 2


def create_instances(
    corpus: TokenizedCorpus,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    objective: str,
    rng: random.Random,
) -> InstanceSpans:
    """One pass of google-research/bert's instance creation over every document, in order.

    Args:
      corpus: the tokenized documents.
      max_seq_length: the length of a row including [CLS] and [SEP]s.
      short_seq_prob: probability that a document uses a shorter random target length.
      objective: "nsp", "sop" or "none" (see the module docstring).
      rng: the source of randomness (a `random.Random`, as the reference).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"data.sentence_objective must be one of {OBJECTIVES}, got {objective!r}")
    pair = objective != "none"
    max_num_tokens = max_seq_length - (3 if pair else 2)
    if max_num_tokens < 2:
        raise ValueError(f"data.max_seq_length={max_seq_length} is too short for {objective!r}")
    # Plain Python ints and lists: this loop is per sentence, and list indexing beats numpy here.
    starts: list[int] = corpus.sentence_starts.tolist()
    doc_starts: list[int] = corpus.document_starts.tolist()
    num_docs = len(doc_starts) - 1
    if num_docs < 1:
        raise ValueError("no documents to create instances from")
    out_a_start: list[int] = []
    out_a_len: list[int] = []
    out_b_start: list[int] = []
    out_b_len: list[int] = []
    out_label: list[int] = []
    uniform, randint, getrandbits = rng.random, rng.randint, rng.getrandbits

    for d in range(num_docs):
        first, end = doc_starts[d], doc_starts[d + 1]
        target = max_num_tokens
        if uniform() < short_seq_prob:
            target = randint(2, max_num_tokens)
        chunk_first = first
        current_length = 0
        i = first
        while i < end:
            current_length += starts[i + 1] - starts[i]
            if i != end - 1 and current_length < target:
                i += 1
                continue
            chunk_n = i + 1 - chunk_first  # sentences chunk_first .. i
            a_end = 1 if chunk_n < 2 or not pair else randint(1, chunk_n - 1)
            if not pair:
                a_end = chunk_n
            a_start = starts[chunk_first]
            a_len = starts[chunk_first + a_end] - a_start
            b_start = b_len = label = 0
            if pair:
                random_next = chunk_n == 1 or (objective == "nsp" and uniform() < 0.5)
                if random_next:
                    label = 1
                    target_b = target - a_len
                    rd = d
                    for _ in range(10):
                        rd = randint(0, num_docs - 1)
                        if rd != d:
                            break
                    r_first, r_end = doc_starts[rd], doc_starts[rd + 1]
                    j = r_first + randint(0, r_end - r_first - 1)
                    b_start = starts[j]
                    while j < r_end:
                        j += 1
                        if starts[j] - b_start >= target_b:
                            break
                    b_len = starts[j] - b_start
                    # Put the unused sentences back: the next chunk starts right after A.
                    i -= chunk_n - a_end
                else:
                    b_start = starts[chunk_first + a_end]
                    b_len = starts[i + 1] - b_start
                    if objective == "sop" and uniform() < 0.5:
                        label = 1
                        a_start, a_len, b_start, b_len = b_start, b_len, a_start, a_len
            # truncate_seq_pair: how much each segment loses, then from which end (each removed
            # token comes off the front with probability 1/2, so the front count is binomial).
            new_a, new_b = truncated_lengths(a_len, b_len, max_num_tokens)
            if new_a < a_len:
                a_start += getrandbits(a_len - new_a).bit_count()
            if new_b < b_len:
                b_start += getrandbits(b_len - new_b).bit_count()
            out_a_start.append(a_start)
            out_a_len.append(new_a)
            out_b_start.append(b_start)
            out_b_len.append(new_b)
            out_label.append(label)
            i += 1
            chunk_first = i
            current_length = 0

    return InstanceSpans(
        np.asarray(out_a_start, np.int64),
        np.asarray(out_a_len, np.int64),
        np.asarray(out_b_start, np.int64),
        np.asarray(out_b_len, np.int64),
        np.asarray(out_label, np.int32),
    )


@dataclasses.dataclass(frozen=True)
class AssembledBatch:
    """Unmasked rows `[CLS] A [SEP] B [SEP] [PAD]...` and what masking needs to know."""

    input_ids: np.ndarray  # int32[B, T]
    token_type_ids: np.ndarray  # int32[B, T]
    attention_mask: np.ndarray  # int32[B, T]
    candidates: np.ndarray  # bool[B, T]: positions that may be masked (A and B tokens)
    lengths: np.ndarray  # int64[B]: real tokens per row, specials included
    next_sentence_labels: np.ndarray  # int32[B]


def assemble_batch(
    tokens: np.ndarray,
    spans: InstanceSpans,
    *,
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> AssembledBatch:
    """Gathers each instance's tokens into fixed-length rows, vectorised over the batch."""
    n = len(spans)
    # Positions and lengths fit in int32 (faster comparisons); token indices stay int64.
    pos = np.arange(max_seq_length, dtype=np.int32)[None, :]
    a_len = spans.a_len.astype(np.int32)[:, None]
    b_len = spans.b_len.astype(np.int32)[:, None]
    b_first = a_len + 2  # position of B's first token
    in_a = (pos >= 1) & (pos <= a_len)
    in_b = (pos >= b_first) & (pos < b_first + b_len)
    candidates = in_a | in_b
    # Source index in `tokens` of every position: one offset per row and segment.
    offset = np.where(
        in_b, (spans.b_start - spans.a_len - 2)[:, None], (spans.a_start - 1)[:, None]
    )
    src = np.where(candidates, offset + pos, 0)
    input_ids = tokens.take(src) if len(tokens) else np.zeros(src.shape, np.int32)
    input_ids = np.where(candidates, input_ids, pad_id).astype(np.int32, copy=False)
    rows = np.arange(n)
    input_ids[:, 0] = cls_id
    input_ids[rows, spans.a_len + 1] = sep_id
    pair = spans.b_len > 0
    input_ids[rows[pair], (spans.a_len + spans.b_len + 2)[pair]] = sep_id
    lengths = spans.a_len + spans.b_len + np.where(pair, 3, 2)
    attention_mask = (pos < lengths[:, None]).astype(np.int32)
    # Segment B and its closing [SEP] are type 1, as in BERT.
    token_type_ids = (pair[:, None] & (pos >= b_first) & (pos <= b_first + b_len)).astype(np.int32)
    return AssembledBatch(
        input_ids, token_type_ids, attention_mask, candidates, lengths, spans.label.astype(np.int32)
    )
