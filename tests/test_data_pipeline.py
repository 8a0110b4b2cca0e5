"""The pretraining pipeline: determinism, resumable state, host sharding, vocabulary reuse."""

import importlib.util
import json
import logging
import os
import pathlib

import numpy as np
import pytest

from bertjax.data import build_pretraining_data, embedded_corpus
from bertjax.data.pipeline import VOCAB_FILENAME

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_data_config(**overrides):
    """`config.data` of configs/bert_tiny_pretrain.py, shrunk for tests."""
    spec = importlib.util.spec_from_file_location("cfg", REPO / "configs" / "bert_tiny_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.get_config().data
    data.vocab_size = 1200
    data.max_seq_length = 64
    data.max_predictions_per_seq = 10
    for k, v in overrides.items():
        setattr(data, k, v)
    return data


def _same(b1, b2):
    assert b1.keys() == b2.keys()
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k], err_msg=k)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> str:
    """A vocabulary trained once from the embedded corpus (saved by the pipeline)."""
    d = tmp_path_factory.mktemp("vocab")
    build_pretraining_data(tiny_data_config(), seed=0, local_batch_size=4, vocab_dir=str(d))
    return str(d / VOCAB_FILENAME)


@pytest.fixture(scope="module")
def data(vocab_file):
    return build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file), seed=3, local_batch_size=16
    )


def test_batches_have_the_contract_keys_shapes_and_dtypes(data):
    batch = next(data.train_iterator())
    expected = {
        "input_ids": ((16, 64), np.int32),
        "token_type_ids": ((16, 64), np.int32),
        "attention_mask": ((16, 64), np.int32),
        "masked_lm_positions": ((16, 10), np.int32),
        "masked_lm_ids": ((16, 10), np.int32),
        "masked_lm_weights": ((16, 10), np.float32),
        "next_sentence_labels": ((16,), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert data.vocab_size == len(data.tokenizer.vocab)
    assert (batch["input_ids"][:, 0] == data.tokenizer.cls_id).all()
    assert data.tokenizer.pad_id == 0  # trained vocabularies put [PAD] at id 0 like BERT's


def test_same_seed_same_batches_other_seed_other_batches(vocab_file, data):
    again = build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file), seed=3, local_batch_size=16
    )
    other = build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file), seed=4, local_batch_size=16
    )
    it1, it2, it3 = data.train_iterator(), again.train_iterator(), other.train_iterator()
    for _ in range(3):
        b1, b2, b3 = next(it1), next(it2), next(it3)
        _same(b1, b2)
        assert (b1["input_ids"] != b3["input_ids"]).any()


def test_restoring_state_mid_epoch_and_across_epochs_gives_the_identical_next_batches(data):
    it = data.train_iterator()
    size = data._train_source.epoch_size(0)
    steps_per_epoch = size // 16
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    assert state["epoch"] == 0 and state["index"] == 48
    # Run past the end of the epoch: fresh pairs and shuffles in epoch 1.
    expected = [next(it) for _ in range(steps_per_epoch + 2)]
    assert it.get_state()["epoch"] == 1
    restored = data.train_iterator()
    restored.set_state(state)
    for b in expected:
        _same(b, next(restored))
    # A brand-new pipeline object (a restarted process) restores as well.
    assert restored.get_state() == it.get_state()


def test_epochs_re_pair_reshuffle_and_re_mask(vocab_file, data):
    source = data._train_source
    e0, e1 = source.epoch(0), source.epoch(1)
    assert not (len(e0) == len(e1) and (e0.a_start == e1.a_start).all())
    it = data.train_iterator()
    first = next(it)
    state = it.get_state()
    it.set_state({**state, "epoch": 1, "index": 0})
    assert (next(it)["input_ids"] != first["input_ids"]).any()
    # A batch larger than an epoch runs on through the following epochs.
    big = build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file), seed=3, local_batch_size=len(e0) + len(e1) + 5
    ).train_iterator()
    batch = next(big)
    assert batch["input_ids"].shape[0] == len(e0) + len(e1) + 5
    assert big.get_state()["epoch"] == 2


def test_state_from_another_pipeline_is_refused(vocab_file, data):
    other = build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file), seed=4, local_batch_size=16
    )
    with pytest.raises(ValueError, match="different data pipeline"):
        data.train_iterator().set_state(other.train_iterator().get_state())
    with pytest.raises(ValueError, match="out of range"):
        it = data.train_iterator()
        it.set_state({**it.get_state(), "index": 10**9})


def test_grain_checkpoint_handler_round_trip(tmp_path, data):
    from etils import epath
    from grain.checkpoint import CheckpointHandler

    it = data.train_iterator()
    next(it)
    handler = CheckpointHandler()
    handler.save(epath.Path(tmp_path), item=it)
    expected = next(it)
    fresh = handler.restore(epath.Path(tmp_path), item=data.train_iterator())
    _same(expected, next(fresh))


def test_eval_batches_are_deterministic_finite_and_held_out(vocab_file, data):
    a = list(data.eval_iterator(3))
    b = list(data.eval_iterator(3))
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        _same(x, y)
    # Independent of the training seed: runs with different seeds evaluate on the same batches.
    other = build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file), seed=9, local_batch_size=16
    )
    _same(a[0], next(other.eval_iterator(1)))
    # Held-out token sequences never appear in training documents.
    eval_corpus = data._eval_source.corpus
    train_text = set(
        map(
            tuple,
            np.split(
                data._train_source.corpus.tokens, data._train_source.corpus.sentence_starts[1:-1]
            ),
        )
    )
    eval_sents = np.split(eval_corpus.tokens, eval_corpus.sentence_starts[1:-1])
    long_sents = [tuple(s) for s in eval_sents if len(s) > 12]
    assert long_sents and not any(s in train_text for s in long_sents)


def _write_docs(path, docs):
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")


def test_global_batches_do_not_depend_on_the_number_of_hosts(tmp_path, vocab_file):
    """Text files / embedded corpus: hosts build the same global batches and keep their rows,
    so 1 host x 8 rows and 2 hosts x 4 rows see the same data, train and eval; a position
    saved by the 2 hosts (identical on both) continues on 1."""
    docs = [list(d) for d in embedded_corpus.embedded_documents()[:60]]
    _write_docs(tmp_path / "a.txt", docs[:30])
    _write_docs(tmp_path / "b.txt", docs[30:])
    cfg = tiny_data_config(
        source="text_files",
        text_files=f"{tmp_path}/*.txt",
        vocab_file=vocab_file,
        eval_fraction=0.1,
    )
    single = build_pretraining_data(cfg, seed=0, local_batch_size=8)
    hosts = [
        build_pretraining_data(cfg, seed=0, local_batch_size=4, process_index=i, process_count=2)
        for i in range(2)
    ]
    one, two = single.train_iterator(), [h.train_iterator() for h in hosts]
    for _ in range(3):
        want = next(one)
        parts = [next(it) for it in two]
        assert parts[0]["input_ids"].shape == (4, 64)
        assert (parts[0]["input_ids"] != parts[1]["input_ids"]).any()
        for key in want:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key])
    states = [it.get_state() for it in two]
    assert states[0] == states[1] == one.get_state()
    resumed = build_pretraining_data(cfg, seed=0, local_batch_size=8).train_iterator()
    resumed.set_state(states[0])
    np.testing.assert_array_equal(next(resumed)["input_ids"], next(one)["input_ids"])
    want_eval = list(single.eval_iterator(2))
    got_eval = [list(h.eval_iterator(2)) for h in hosts]
    for b, want in enumerate(want_eval):
        for key in want:
            got = np.concatenate([got_eval[0][b][key], got_eval[1][b][key]])
            np.testing.assert_array_equal(got, want[key])


def test_trained_vocabulary_is_saved_and_reused(tmp_path, caplog):
    cfg = tiny_data_config()
    first = build_pretraining_data(cfg, seed=0, local_batch_size=4, vocab_dir=str(tmp_path))
    vocab_path = tmp_path / VOCAB_FILENAME
    assert vocab_path.read_text().splitlines() == first.tokenizer.vocab
    mtime = os.path.getmtime(vocab_path)
    with caplog.at_level(logging.INFO):
        second = build_pretraining_data(cfg, seed=1, local_batch_size=4, vocab_dir=str(tmp_path))
    assert second.tokenizer.vocab == first.tokenizer.vocab
    assert os.path.getmtime(vocab_path) == mtime
    assert "using the vocabulary saved" in caplog.text
    # A different vocabulary size must not silently reuse the saved one.
    with pytest.raises(ValueError, match="vocab_size"):
        build_pretraining_data(
            tiny_data_config(vocab_size=900), seed=0, local_batch_size=4, vocab_dir=str(tmp_path)
        )


def test_vocabulary_training_is_deterministic(tmp_path):
    a = build_pretraining_data(tiny_data_config(), seed=0, local_batch_size=4)
    b = build_pretraining_data(tiny_data_config(), seed=5, local_batch_size=4)
    assert a.tokenizer.vocab == b.tokenizer.vocab
    assert a.tokenizer.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.mark.parametrize("objective", ["sop", "none"])
def test_other_sentence_objectives(vocab_file, objective):
    data = build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file, sentence_objective=objective),
        seed=0,
        local_batch_size=256,
    )
    batch = next(data.train_iterator())
    labels = batch["next_sentence_labels"]
    if objective == "none":
        assert (labels == 0).all() and (batch["token_type_ids"] == 0).all()
        n_sep = (batch["input_ids"] == data.tokenizer.sep_id).sum(1)
        masked_sep = (batch["masked_lm_ids"] == data.tokenizer.sep_id) & (
            batch["masked_lm_weights"] > 0
        )
        assert (n_sep == 1).all() and not masked_sep.any()
    else:
        assert 0.35 < labels.mean() < 0.65
        assert (batch["token_type_ids"].max(1) == 1).all()


def test_whole_word_masking_switch(vocab_file):
    data = build_pretraining_data(
        tiny_data_config(vocab_file=vocab_file, do_whole_word_mask=True),
        seed=0,
        local_batch_size=64,
    )
    batch = next(data.train_iterator())
    assert (batch["masked_lm_weights"].sum(1) >= 1).all()
