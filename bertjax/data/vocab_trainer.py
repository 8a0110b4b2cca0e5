"""Deterministic WordPiece vocabulary training (BPE-style merges, as the `tokenizers` trainer).

Why not `tokenizers.trainers.WordPieceTrainer` directly: it breaks ties between equally frequent
pairs through Rust hash maps with a per-process random seed, so two runs on the same text give
different vocabularies (measured: 4 of 6 runs differed at 2500 tokens on the embedded corpus).
Hosts of one job, or a job and its resumption, must agree on every id, so this trainer breaks
ties by the pieces themselves. Text is normalised and split into words by the same Rust
components the tokenizer uses (BertNormalizer, BertPreTokenizer); the merge loop is Python with
a heap and incremental pair counts.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import normalizers, pre_tokenizers

PREFIX = "##"


def count_words(texts: Iterable[str], *, do_lower_case: bool) -> Counter[str]:
    """Word frequencies after BERT's BasicTokenizer rules (clean, lower-case, punctuation split)."""
    normalizer = normalizers.BertNormalizer(lowercase=do_lower_case)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def train_from_word_counts(
    word_counts: Counter[str],
    *,
    vocab_size: int,
    special_tokens: Sequence[str],
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> list[str]:
    """Specials, then the alphabet (sorted), then merged pieces in merge order.

    Each step merges the most frequent adjacent pair of pieces (ties: the smallest pair of
    strings), until `vocab_size` tokens or no pair occurs `min_frequency` times.
    """
    # Alphabet: the `limit_alphabet` most frequent characters (ties by code point).
    char_counts: Counter[str] = Counter()
    for word, c in word_counts.items():
        for ch in word:
            char_counts[ch] += c
    alphabet = {
        ch for ch, _ in sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit_alphabet]
    }
    words: list[list[str]] = []
    counts: list[int] = []
    initial: set[str] = set()
    for word in sorted(word_counts):
        if not all(ch in alphabet for ch in word):
            continue  # words with a rare character cannot be built from the alphabet
        symbols = [word[0]] + [PREFIX + ch for ch in word[1:]]
        initial.update(symbols)
        words.append(symbols)
        counts.append(word_counts[word])
    vocab = list(special_tokens)
    vocab += sorted(s for s in initial if not s.startswith(PREFIX))
    vocab += sorted(s for s in initial if s.startswith(PREFIX))
    seen = set(vocab)

    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for wi, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:], strict=False):
            pair_counts[pair] += counts[wi]
            where.setdefault(pair, set()).add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        new = a + (b[len(PREFIX) :] if b.startswith(PREFIX) else b)
        if new not in seen:
            seen.add(new)
            vocab.append(new)
        changed: set[tuple[str, str]] = set()
        for wi in sorted(where.pop((a, b), ())):
            symbols, c = words[wi], counts[wi]
            if len(symbols) < 2:
                continue
            for pair in zip(symbols, symbols[1:], strict=False):
                pair_counts[pair] -= c
                changed.add(pair)
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[wi] = merged
            for pair in zip(merged, merged[1:], strict=False):
                pair_counts[pair] += c
                where.setdefault(pair, set()).add(wi)
                changed.add(pair)
        pair_counts.pop((a, b), None)
        for pair in changed:
            c = pair_counts.get(pair, 0)
            if c > 0:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
            else:
                pair_counts.pop(pair, None)
    return vocab
