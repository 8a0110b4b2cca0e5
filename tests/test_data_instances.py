"""Instances and masking: the google-research/bert algorithm, row structure, statistics."""

import random

import numpy as np
import pytest

from bertjax.data import embedded_corpus
from bertjax.data.instances import (
    InstanceSpans,
    TokenizedCorpus,
    assemble_batch,
    create_instances,
    truncated_lengths,
)
from bertjax.data.masking import MaskingConfig, mask_batch
from bertjax.data.pipeline import tokenize_documents
from bertjax.data.tokenizer import WordPieceTokenizer, train_wordpiece_vocab

T = 64  # rows of 64 tokens keep the tests fast; nothing below depends on 128


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    docs = embedded_corpus.embedded_documents()
    vocab = train_wordpiece_vocab((s for d in docs for s in d), vocab_size=1500, do_lower_case=True)
    return WordPieceTokenizer(vocab, do_lower_case=True)


@pytest.fixture(scope="module")
def corpus(tokenizer) -> TokenizedCorpus:
    return tokenize_documents(tokenizer, [list(d) for d in embedded_corpus.embedded_documents()])


# --- reference: google-research/bert create_instances_from_document, on token lists ------------


def _reference_instances(docs, max_seq_length, short_seq_prob, objective, rng):
    """A line-by-line port of google-research/bert (ALBERT's branch for "sop").

    The one change: truncate_seq_pair's coin flips come from `getrandbits(k).bit_count()` per
    segment (the same distribution), so that the RNG streams of the two versions line up.
    """
    out = []
    max_num_tokens = max_seq_length - 3
    for document_index, document in enumerate(docs):
        target_seq_length = max_num_tokens
        if rng.random() < short_seq_prob:
            target_seq_length = rng.randint(2, max_num_tokens)
        current_chunk, current_length, i = [], 0, 0
        while i < len(document):
            segment = document[i]
            current_chunk.append(segment)
            current_length += len(segment)
            if i == len(document) - 1 or current_length >= target_seq_length:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = [t for j in range(a_end) for t in current_chunk[j]]
                tokens_b = []
                is_random_next = False
                if len(current_chunk) == 1 or (objective == "nsp" and rng.random() < 0.5):
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(docs) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = docs[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(current_chunk) - a_end
                elif objective == "sop" and rng.random() < 0.5:
                    is_random_next = True
                    tokens_b = [
                        t for j in range(a_end, len(current_chunk)) for t in current_chunk[j]
                    ]
                    tokens_a, tokens_b = tokens_b, tokens_a
                else:
                    tokens_b = [
                        t for j in range(a_end, len(current_chunk)) for t in current_chunk[j]
                    ]
                la, lb = len(tokens_a), len(tokens_b)
                while la + lb > max_num_tokens:  # truncate_seq_pair's lengths
                    if la > lb:
                        la -= 1
                    else:
                        lb -= 1
                fa = rng.getrandbits(len(tokens_a) - la).bit_count() if la < len(tokens_a) else 0
                fb = rng.getrandbits(len(tokens_b) - lb).bit_count() if lb < len(tokens_b) else 0
                tokens_a, tokens_b = tokens_a[fa : fa + la], tokens_b[fb : fb + lb]
                assert tokens_a and tokens_b
                out.append((tokens_a, tokens_b, int(is_random_next)))
                current_chunk, current_length = [], 0
            i += 1
    return out


def _as_lists(corpus: TokenizedCorpus):
    s, d, tok = corpus.sentence_starts, corpus.document_starts, corpus.tokens
    return [
        [tok[s[j] : s[j + 1]].tolist() for j in range(d[k], d[k + 1])]
        for k in range(corpus.num_documents)
    ]


@pytest.mark.parametrize("objective", ["nsp", "sop"])
def test_instances_match_reference_algorithm(corpus, objective):
    ours = create_instances(
        corpus, max_seq_length=T, short_seq_prob=0.1, objective=objective, rng=random.Random(7)
    )
    ref = _reference_instances(_as_lists(corpus), T, 0.1, objective, random.Random(7))
    assert len(ours) == len(ref) > 500
    tok = corpus.tokens
    for k, (a, b, label) in enumerate(ref):
        a0, la, b0, lb = (int(x[k]) for x in (ours.a_start, ours.a_len, ours.b_start, ours.b_len))
        assert tok[a0 : a0 + la].tolist() == a, k
        assert tok[b0 : b0 + lb].tolist() == b, k
        assert int(ours.label[k]) == label, k


def test_truncated_lengths_equals_truncate_seq_pair_loop():
    def loop(a, b, m):
        while a + b > m:
            if a > b:
                a -= 1
            else:
                b -= 1
        return a, b

    for a in range(1, 30):
        for b in range(0, 30):
            for m in range(1, 45):
                assert truncated_lengths(a, b, m) == loop(a, b, m), (a, b, m)


def test_none_objective_packs_whole_sentences_of_one_document(corpus):
    spans = create_instances(
        corpus, max_seq_length=T, short_seq_prob=0.0, objective="none", rng=random.Random(0)
    )
    assert (spans.b_len == 0).all() and (spans.label == 0).all()
    assert (spans.a_len >= 1).all() and (spans.a_len <= T - 2).all()
    # Untruncated instances start on a sentence boundary and stay inside one document.
    starts = set(corpus.sentence_starts.tolist())
    doc_of_token = np.repeat(
        np.arange(corpus.num_documents),
        np.diff(corpus.sentence_starts[corpus.document_starts]),
    )
    short = spans.a_len < T - 2
    assert all(int(x) in starts for x in spans.a_start[short])
    ends = spans.a_start + spans.a_len - 1
    assert (doc_of_token[spans.a_start] == doc_of_token[ends]).all()


def _batch(tokenizer, corpus, n, *, seed=0, objective="nsp", wwm=False, short_seq_prob=0.1):
    spans = create_instances(
        corpus,
        max_seq_length=T,
        short_seq_prob=short_seq_prob,
        objective=objective,
        rng=random.Random(seed),
    )
    reps = -(-n // len(spans))
    spans = InstanceSpans.concatenate([spans] * reps).take(slice(0, n))
    rows = assemble_batch(
        corpus.tokens,
        spans,
        max_seq_length=T,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        pad_id=tokenizer.pad_id,
    )
    cfg = MaskingConfig(
        max_predictions_per_seq=10,
        masked_lm_prob=0.15,
        do_whole_word_mask=wwm,
        mask_id=tokenizer.mask_id,
        replacement_ids=tokenizer.random_replacement_ids(),
        is_subword=tokenizer.is_subword_table(),
    )
    return spans, rows, mask_batch(rows, cfg, np.random.default_rng(seed))


def _unmask(batch):
    ids = batch["input_ids"].copy()
    r, c = np.nonzero(batch["masked_lm_weights"])
    ids[r, batch["masked_lm_positions"][r, c]] = batch["masked_lm_ids"][r, c]
    return ids


def test_every_row_is_cls_a_sep_b_sep_pad(tokenizer, corpus):
    spans, _, batch = _batch(tokenizer, corpus, 600)
    ids = _unmask(batch)
    tok = corpus.tokens
    for k in range(len(spans)):
        a0, la, b0, lb = (
            int(x[k]) for x in (spans.a_start, spans.a_len, spans.b_start, spans.b_len)
        )
        n = la + lb + 3
        expected = [tokenizer.cls_id, *tok[a0 : a0 + la], tokenizer.sep_id, *tok[b0 : b0 + lb]]
        expected += [tokenizer.sep_id] + [tokenizer.pad_id] * (T - n)
        assert ids[k].tolist() == expected
        assert batch["token_type_ids"][k].tolist() == [0] * (la + 2) + [1] * (lb + 1) + [0] * (
            T - n
        )
        assert batch["attention_mask"][k].tolist() == [1] * n + [0] * (T - n)
    assert batch["next_sentence_labels"].tolist() == spans.label.tolist()
    for key, dtype in [
        ("input_ids", np.int32),
        ("token_type_ids", np.int32),
        ("attention_mask", np.int32),
        ("masked_lm_positions", np.int32),
        ("masked_lm_ids", np.int32),
        ("masked_lm_weights", np.float32),
        ("next_sentence_labels", np.int32),
    ]:
        assert batch[key].dtype == dtype, key


def test_masking_statistics(tokenizer, corpus):
    _, rows, batch = _batch(tokenizer, corpus, 4000)
    weights = batch["masked_lm_weights"]
    lengths = rows.lengths
    # google-research/bert's budget, exactly: min(P, max(1, round(len * 0.15))).
    budget = np.minimum(10, np.maximum(1, np.rint(lengths * 0.15)))
    np.testing.assert_array_equal(weights.sum(1), budget)
    assert abs(weights.sum() / lengths.sum() - 0.15) < 0.01
    # Targets sit on distinct A/B tokens (never [CLS]/[SEP]/[PAD]), ascending, padding slots 0.
    pos, w = batch["masked_lm_positions"], weights > 0
    orig = _unmask(batch)
    r = np.nonzero(w)[0]
    assert rows.candidates[r, pos[w]].all()
    specials = {tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id}
    assert not set(orig[r, pos[w]].tolist()) & specials
    assert (np.diff(pos, axis=1)[w[:, 1:]] > 0).all()
    assert (w[:, :-1] >= w[:, 1:]).all()  # real targets first, padding slots after
    assert (pos[~w] == 0).all() and (batch["masked_lm_ids"][~w] == 0).all()
    # 80% [MASK], 10% random, 10% kept.
    now = batch["input_ids"][r, pos[w]]
    n = w.sum()
    frac_mask = (now == tokenizer.mask_id).mean()
    frac_keep = (now == batch["masked_lm_ids"][w]).mean()
    assert abs(frac_mask - 0.8) < 4 * np.sqrt(0.16 / n)
    assert abs(frac_keep - 0.1) < 4 * np.sqrt(0.09 / n) + 0.002  # random can repeat the token
    assert abs(1 - frac_mask - frac_keep - 0.1) < 4 * np.sqrt(0.09 / n) + 0.002
    # Unmasked positions are untouched, and random replacements are never specials.
    changed = batch["input_ids"] != orig
    mask_pos = np.zeros_like(changed)
    mask_pos[r, pos[w]] = True
    assert not (changed & ~mask_pos).any()
    replaced = batch["input_ids"][changed & (batch["input_ids"] != tokenizer.mask_id)]
    assert not set(replaced.tolist()) & set(tokenizer.special_ids.tolist())


def test_nsp_labels_balanced_when_chunks_have_several_sentences(tokenizer, corpus):
    # The reference algorithm takes a random B half of the time, except for single-sentence
    # chunks (always random), which happen at document ends. Split sentences into pieces of <= 6
    # tokens and join the documents into 8 long ones: chunks then always hold several pieces.
    pieces = [[s[i : i + 6] for s in doc for i in range(0, len(s), 6)] for doc in _as_lists(corpus)]
    long_docs = [sum(pieces[k::8], []) for k in range(8)]
    small = TokenizedCorpus.from_token_lists(long_docs)
    spans = create_instances(
        small, max_seq_length=T, short_seq_prob=0.1, objective="nsp", rng=random.Random(3)
    )
    n = len(spans)
    assert n > 1000
    assert abs(spans.label.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    # On the real corpus single-sentence chunks always take a random B (as the reference does).
    real = create_instances(
        corpus, max_seq_length=T, short_seq_prob=0.1, objective="nsp", rng=random.Random(3)
    )
    assert 0.45 < real.label.mean() < 0.65


def test_sop_swaps_half_and_keeps_both_segments_from_one_document(tokenizer, corpus):
    spans = create_instances(
        corpus, max_seq_length=T, short_seq_prob=0.0, objective="sop", rng=random.Random(5)
    )
    doc_of_token = np.repeat(
        np.arange(corpus.num_documents),
        np.diff(corpus.sentence_starts[corpus.document_starts]),
    )
    same_doc = doc_of_token[spans.a_start] == doc_of_token[spans.b_start]
    swapped = spans.a_start > spans.b_start
    # Label 1 with both segments in one document means "swapped": B comes before A in the text.
    np.testing.assert_array_equal(swapped[same_doc], spans.label[same_doc] == 1)
    assert abs(swapped[same_doc].mean() - 0.5) < 0.06


def test_whole_word_masking_never_splits_a_word(tokenizer, corpus):
    _, rows, batch = _batch(tokenizer, corpus, 2000, wwm=True)
    orig = _unmask(batch)
    chosen = np.zeros(orig.shape, bool)
    w = batch["masked_lm_weights"] > 0
    chosen[np.nonzero(w)[0], batch["masked_lm_positions"][w]] = True
    sub = tokenizer.is_subword_table()[orig] & rows.candidates
    prev_cand = np.zeros_like(sub)
    prev_cand[:, 1:] = rows.candidates[:, :-1]
    continuation = sub & prev_cand  # a ## piece that continues the word before it
    n_multi = 0
    for r in range(len(orig)):
        for t in np.nonzero(continuation[r])[0]:
            assert chosen[r, t] == chosen[r, t - 1], (r, t)
            n_multi += chosen[r, t]
    assert n_multi > 50  # words of several pieces were masked, whole
    # The budget is respected, and greedily filled as in the reference.
    budget = np.minimum(10, np.maximum(1, np.rint(rows.lengths * 0.15)))
    assert (w.sum(1) <= budget).all()
    assert w.sum() / budget.sum() > 0.97


def test_masks_are_dynamic(tokenizer, corpus):
    _, _, b1 = _batch(tokenizer, corpus, 64, seed=0)
    spans = create_instances(
        corpus, max_seq_length=T, short_seq_prob=0.1, objective="nsp", rng=random.Random(0)
    ).take(slice(0, 64))
    rows = assemble_batch(
        corpus.tokens,
        spans,
        max_seq_length=T,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        pad_id=tokenizer.pad_id,
    )
    cfg = MaskingConfig(
        10,
        0.15,
        False,
        tokenizer.mask_id,
        tokenizer.random_replacement_ids(),
        tokenizer.is_subword_table(),
    )
    again = mask_batch(rows, cfg, np.random.default_rng(0))
    other = mask_batch(rows, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(again["input_ids"], b1["input_ids"])
    assert (other["masked_lm_positions"] != b1["masked_lm_positions"]).any()


def test_tokenizing_in_chunks_gives_the_same_corpus(tokenizer, corpus):
    docs = [list(d) for d in embedded_corpus.embedded_documents()]
    chunked = tokenize_documents(tokenizer, docs, chunk_sentences=37)
    for field in ("tokens", "sentence_starts", "document_starts"):
        np.testing.assert_array_equal(getattr(chunked, field), getattr(corpus, field))
    assert corpus.num_documents == len(docs)
