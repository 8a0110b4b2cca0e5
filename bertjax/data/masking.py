"""Dynamic masked-LM masking, vectorised over a batch with numpy.

Same rules as google-research/bert's `create_masked_lm_predictions`: per row,
`num_to_predict = min(max_predictions_per_seq, max(1, round(len(tokens) * masked_lm_prob)))`
positions are chosen uniformly among the A/B tokens ([CLS], [SEP] and [PAD] never), or whole
words are chosen in random order and skipped when they would overflow the budget
(`do_whole_word_mask`); each chosen token becomes [MASK] 80% of the time, a random token 10%,
and stays itself 10%. Random replacements are drawn from ordinary tokens only (never a special
or [unusedN] token), a deliberate difference from the reference, which draws from the whole
vocabulary.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertjax.data.instances import AssembledBatch


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """What masking needs from the config and the vocabulary."""

    max_predictions_per_seq: int
    masked_lm_prob: float
    do_whole_word_mask: bool
    mask_id: int
    replacement_ids: np.ndarray  # int32: ids a masked token may be replaced by (10% case)
    is_subword: np.ndarray  # bool[vocab_size]: True for `##` continuation pieces

    def __post_init__(self):
        if self.max_predictions_per_seq < 1:
            raise ValueError(
                f"data.max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}"
            )
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError(f"data.masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")


def mask_batch(
    batch: AssembledBatch, cfg: MaskingConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Masks `batch` and returns the model batch (keys as in docs/architecture.md)."""
    input_ids = batch.input_ids.copy()
    n_rows, seq_len = input_ids.shape
    num_preds = cfg.max_predictions_per_seq
    n_candidates = batch.candidates.sum(axis=1)
    budget = np.minimum(
        num_preds, np.maximum(1, np.rint(batch.lengths * cfg.masked_lm_prob).astype(np.int64))
    )
    budget = np.minimum(budget, n_candidates)

    if cfg.do_whole_word_mask:
        chosen = _choose_whole_words(input_ids, batch.candidates, budget, cfg.is_subword, rng)
        # Chosen positions, ascending, packed into [B, P] (at most `budget` <= P per row).
        keyed = np.where(chosen, np.arange(seq_len)[None, :], seq_len)
        k = min(num_preds, seq_len)
        positions = np.sort(np.partition(keyed, k - 1, axis=1)[:, :k], axis=1)
    else:
        positions = _choose_tokens(batch.candidates, budget, num_preds, rng)
    if positions.shape[1] < num_preds:  # max_predictions_per_seq == max_seq_length edge case
        pad = np.full((n_rows, num_preds - positions.shape[1]), seq_len, positions.dtype)
        positions = np.concatenate([positions, pad], axis=1)
    valid = positions < seq_len
    positions = np.where(valid, positions, 0).astype(np.int32)
    weights = valid.astype(np.float32)
    masked_ids = np.where(valid, np.take_along_axis(input_ids, positions, axis=1), 0).astype(
        np.int32
    )
    rows = np.broadcast_to(np.arange(n_rows)[:, None], positions.shape)[valid]
    cols = positions[valid]

    # 80% [MASK], 10% random ordinary token, 10% unchanged.
    u = rng.random(len(rows), dtype=np.float32)
    to_mask = u < 0.8
    to_random = u >= 0.9
    input_ids[rows[to_mask], cols[to_mask]] = cfg.mask_id
    n_random = int(to_random.sum())
    if n_random:
        picks = rng.integers(0, len(cfg.replacement_ids), n_random)
        input_ids[rows[to_random], cols[to_random]] = cfg.replacement_ids[picks]

    return {
        "input_ids": input_ids,
        "token_type_ids": batch.token_type_ids,
        "attention_mask": batch.attention_mask,
        "masked_lm_positions": positions,
        "masked_lm_ids": masked_ids,
        "masked_lm_weights": weights,
        "next_sentence_labels": batch.next_sentence_labels,
    }


def _choose_tokens(
    candidates: np.ndarray, budget: np.ndarray, num_preds: int, rng: np.random.Generator
) -> np.ndarray:
    """int[B, P]: `budget[b]` random candidate positions of row b, ascending, then `T` padding.

    One sort per row: each key holds random bits above the position's bits, so sorting the keys
    shuffles the positions and the position is read back from the low bits (no argsort). int32
    keys (fast SIMD sorts) leave 23 random bits at length 128; two equal random parts (about one
    row in 2,000) only order those two positions by index.
    """
    n_rows, seq_len = candidates.shape
    bits = max(1, int(seq_len - 1).bit_length())
    dtype = np.int32 if bits <= 12 else np.int64
    top = 30 if dtype == np.int32 else 62
    keys = _random_bits(rng, candidates.shape, dtype, top - bits) << bits
    keys |= np.arange(seq_len, dtype=dtype)[None, :]
    keys = np.where(candidates, keys, np.iinfo(dtype).max)  # non-candidates sort last
    k = min(num_preds, seq_len)
    smallest = np.sort(np.partition(keys, k - 1, axis=1)[:, :k], axis=1)
    picked = smallest & ((1 << bits) - 1)
    picked = np.where(np.arange(k)[None, :] < budget[:, None], picked, seq_len)
    return np.sort(picked, axis=1)


def _random_bits(rng: np.random.Generator, shape: tuple[int, ...], dtype, nbits: int) -> np.ndarray:
    """Uniform `nbits`-bit non-negative integers: raw generator output, masked (2x faster than
    `rng.integers`, which draws bounded values)."""
    n = int(np.prod(shape))
    itemsize = np.dtype(dtype).itemsize
    raw = rng.bit_generator.random_raw(-(-n * itemsize // 8))
    return (raw.view(dtype)[:n].reshape(shape)) & dtype((1 << nbits) - 1)


def _choose_whole_words(
    input_ids: np.ndarray,
    candidates: np.ndarray,
    budget: np.ndarray,
    is_subword: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """bool[B, T]: whole words in random order, skipping any that would overflow the budget.

    A word is a candidate token that is not a `##` piece, plus the `##` pieces that follow it
    (a `##` piece right after [CLS]/[SEP] starts a word of its own). The greedy pass over the
    shuffled words loops over word *ranks* with each step vectorised over the batch.
    """
    n_rows, seq_len = input_ids.shape
    prev_candidate = np.zeros_like(candidates)
    prev_candidate[:, 1:] = candidates[:, :-1]
    starts = candidates & (~is_subword[input_ids] | ~prev_candidate)
    word_id = np.cumsum(starts, axis=1) - 1  # word index per position (valid on candidates)
    n_words = starts.sum(axis=1)
    max_words = int(n_words.max()) if n_rows else 0
    if max_words == 0:
        return np.zeros_like(candidates)
    # Word lengths [B, W]: count candidate positions per word id.
    rows = np.nonzero(candidates)[0]
    flat_word = rows * max_words + word_id[candidates]
    word_len = np.bincount(flat_word, minlength=n_rows * max_words).reshape(n_rows, max_words)
    # Random order of each row's words; absent words (index >= n_words) sort last.
    keys = rng.random((n_rows, max_words), dtype=np.float32)
    keys[np.arange(max_words)[None, :] >= n_words[:, None]] = 2.0
    order = np.argsort(keys, axis=1)
    sorted_len = np.take_along_axis(word_len, order, axis=1)
    accepted_sorted = np.zeros((n_rows, max_words), bool)
    count = np.zeros(n_rows, np.int64)
    for r in range(max_words):
        lens = sorted_len[:, r]
        ok = (lens > 0) & (count + lens <= budget)
        accepted_sorted[:, r] = ok
        count += np.where(ok, lens, 0)
        if r % 8 == 7 and np.all((count >= budget) | (r + 1 >= n_words)):
            break
    accepted = np.zeros((n_rows, max_words), bool)
    np.put_along_axis(accepted, order, accepted_sorted, axis=1)
    safe_word = np.where(candidates, word_id, 0)
    return candidates & np.take_along_axis(accepted, safe_word, axis=1)
