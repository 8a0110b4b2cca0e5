"""Causal-LM data: byte-level BPE, packing with end-of-text, document masking, resumable shards."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from bertjax.data import lm
from bertjax.data.bpe import EOT_TOKEN, ByteBPETokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Café, naïve, 東京 and emoji 🙂 are bytes too.",
    "Python's import statement finds and loads a module.",
    "A second paragraph about modules, packages and import hooks.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return ByteBPETokenizer.train(TEXTS, vocab_size=400)


def test_bpe_is_lossless_and_saves_gpt2_files(tokenizer, tmp_path):
    for text in TEXTS[:4] + ["  leading spaces,\ttabs\nand newlines  "]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert 257 < tokenizer.vocab_size <= 400  # the tiny corpus may run out of merges
    ids = tokenizer.encode(f"a{EOT_TOKEN}b")
    assert list(ids).count(tokenizer.eot_id) == 1  # the special token is never split
    tokenizer.save(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (tmp_path / name).is_file()
    from_files = ByteBPETokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    from_dir = ByteBPETokenizer.from_dir(tmp_path)
    for tok in (from_files, from_dir):
        assert tok.eot_id == tokenizer.eot_id
        for text in TEXTS[:4]:
            np.testing.assert_array_equal(tok.encode(text), tokenizer.encode(text))


def test_bpe_agrees_with_transformers_gpt2_tokenizer(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS[:4]:
        assert hf(text)["input_ids"] == tokenizer.encode(text).tolist()
    assert hf.eos_token_id == tokenizer.eot_id


def test_bpe_bad_files(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        ByteBPETokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(FileNotFoundError, match="tokenizer.json or vocab.json"):
        ByteBPETokenizer.from_dir(tmp_path)
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text(json.dumps({"a": 0, "b": 1}))
    merges.write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match=r"merges.txt:2: merge 'a b' uses 'ab'"):
        ByteBPETokenizer.from_files(vocab, merges)
    merges.write_text("#version: 0.2\n")
    with caplog.at_level(logging.WARNING):
        assert ByteBPETokenizer.from_files(vocab, merges).eot_id == 2  # appended, with a warning
    assert "no <|endoftext|> token" in caplog.text
    vocab.write_text("[1, 2]")
    with pytest.raises(ValueError, match="vocab.json: expected a JSON object"):
        ByteBPETokenizer.from_files(vocab, merges)


def test_stream_and_rows_use_every_token_once():
    eot = 0
    docs = [np.arange(1, 6), np.arange(10, 13), np.arange(20, 30)]
    stream = lm.token_stream(docs, eot)
    np.testing.assert_array_equal(stream, [0, 1, 2, 3, 4, 5, 0, 10, 11, 12, 0, *range(20, 30)])
    seq = 4
    rows = lm.num_rows(stream, seq)
    assert rows == (len(stream) - 1) // seq == 5
    batch = lm.make_batch(stream, np.arange(rows), seq, eot, document_masking=True)
    # Inputs tile the stream; targets are the inputs shifted by one; no token is a target twice.
    np.testing.assert_array_equal(batch["input_ids"].ravel(), stream[: rows * seq])
    np.testing.assert_array_equal(batch["targets"].ravel(), stream[1 : rows * seq + 1])
    # An <eot> opens a new segment and restarts the positions.
    np.testing.assert_array_equal(batch["input_ids"][1], [4, 5, 0, 10])
    np.testing.assert_array_equal(batch["segment_ids"][1], [1, 1, 2, 2])
    np.testing.assert_array_equal(batch["positions"][1], [0, 1, 0, 1])
    np.testing.assert_array_equal(batch["positions"][0], [0, 1, 2, 3])
    plain = lm.make_batch(stream, np.arange(rows), seq, eot, document_masking=False)
    assert set(plain) == {"input_ids", "targets"}


def _iterator(stream, **kw):
    args = dict(
        seq_len=8,
        global_batch_size=6,
        shard_index=0,
        shard_count=1,
        seed=3,
        eot_id=0,
        document_masking=False,
    )
    args.update(kw)
    return lm.PackedLMIterator(stream, **args)


def test_iterator_resumes_exactly_and_reshuffles_each_epoch():
    stream = np.random.default_rng(0).integers(1, 50, 8 * 20 + 1).astype(np.int32)
    it = _iterator(stream)
    assert it.steps_per_epoch == 20 // 6
    batches = [next(it) for _ in range(7)]  # crosses two epoch boundaries
    restored = _iterator(stream)
    for _ in range(2):
        next(restored)
    state = restored.get_state()
    fresh = _iterator(stream)
    fresh.set_state(json.loads(json.dumps(state)))  # the state is plain JSON
    for expected in batches[2:]:
        got = next(fresh)
        np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
    epoch0 = np.concatenate([b["input_ids"] for b in batches[:3]])
    epoch1 = np.concatenate([b["input_ids"] for b in batches[3:6]])
    assert not np.array_equal(epoch0, epoch1)
    assert len({r.tobytes() for r in epoch0}) == len(epoch0)  # no row twice in an epoch
    with pytest.raises(ValueError, match="steps per epoch"):
        fresh.set_state({"epoch": 0, "step": 99})
    with pytest.raises(KeyError, match="step"):
        fresh.set_state({"epoch": 0})


def test_host_shards_are_disjoint_and_form_the_global_batch():
    stream = np.random.default_rng(1).integers(1, 50, 8 * 30 + 1).astype(np.int32)
    one = _iterator(stream)
    hosts = [_iterator(stream, shard_index=h, shard_count=3) for h in range(3)]
    for _ in range(5):
        whole = next(one)["input_ids"]
        parts = [next(h)["input_ids"] for h in hosts]
        assert all(len(p) == 2 for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_eval_batches_cover_every_row_once_with_padding_marked():
    stream = np.arange(8 * 11 + 1, dtype=np.int32) + 1
    batches = [
        lm.eval_batches(
            stream,
            seq_len=8,
            global_batch_size=4,
            shard_index=h,
            shard_count=2,
            eot_id=0,
            document_masking=False,
        )
        for h in range(2)
    ]
    assert len(batches[0]) == len(batches[1]) == 3  # ceil(11 / 4)
    rows = [
        row
        for b in range(3)
        for h in range(2)
        for row, w in zip(batches[h][b]["input_ids"], batches[h][b]["weights"], strict=True)
        if w > 0
    ]
    np.testing.assert_array_equal(np.concatenate(rows), stream[: 11 * 8])


def test_build_lm_data_on_the_embedded_corpus(tmp_path):
    config = {"max_seq_length": 32, "vocab_size": 512, "eval_fraction": 0.05}
    data = lm.build_lm_data(config, seed=0, global_batch_size=4, workdir=str(tmp_path))
    assert (tmp_path / lm.TOKENIZER_SUBDIR / "tokenizer.json").is_file()
    batch = next(data.train)
    assert batch["input_ids"].shape == (4, 32) and batch["input_ids"].dtype == np.int32
    assert data.tokenizer.vocab_size == 512 and len(data.eval_stream) > 33
    assert data.stats.documents_kept > 100
    # A second run in the same workdir loads the saved tokenizer rather than training one.
    again = lm.build_lm_data(config, seed=0, global_batch_size=4, workdir=str(tmp_path))
    np.testing.assert_array_equal(next(again.train)["input_ids"], batch["input_ids"])


def test_bad_data_configs_name_the_key(tmp_path):
    with pytest.raises(KeyError, match="data.masked_lm_prob"):
        lm.LMDataSettings.from_config({"masked_lm_prob": 0.15})
    with pytest.raises(ValueError, match="merges_file"):
        lm.LMDataSettings.from_config({"vocab_file": "vocab.json"})
    with pytest.raises(TypeError, match="data.max_seq_length"):
        lm.LMDataSettings.from_config({"max_seq_length": "128"})
    with pytest.raises(ValueError, match="data.source"):
        lm.LMDataSettings.from_config({"source": "wikipedia"})
    small = tmp_path / "small.txt"
    small.write_text("One short document with a few words in it.\n")
    with pytest.raises(ValueError, match="one batch needs 64 rows"):
        lm.build_lm_data(
            {
                "source": "text_files",
                "text_files": str(small),
                "eval_fraction": 0.0,
                "vocab_size": 300,
            },
            seed=0,
            global_batch_size=64,
        )


def test_prepared_corpus_gives_the_online_batches(tmp_path, tokenizer):
    """lm_prepare's memory-mapped token files feed exactly the batches of the online path."""
    from bertjax.data import lm_prepare

    tokenizer.save(tmp_path / "vocab")
    config = {
        "vocab_file": str(tmp_path / "vocab" / "vocab.json"),
        "merges_file": str(tmp_path / "vocab" / "merges.txt"),
        "max_seq_length": 32,
        "eval_fraction": 0.05,
    }
    meta = lm_prepare.prepare(lm.LMDataSettings.from_config(config), str(tmp_path / "prep"))
    assert meta["dtype"] == "uint16" and meta["documents"]["eval"] > 0
    online = lm.build_lm_data(config, seed=1, global_batch_size=4)
    prepared = lm.build_lm_data(
        {"source": "prepared", "prepared_dir": str(tmp_path / "prep"), "max_seq_length": 32},
        seed=1,
        global_batch_size=4,
    )
    assert isinstance(prepared.train.stream, np.memmap)
    np.testing.assert_array_equal(prepared.train.stream, online.train.stream)
    for _ in range(3):
        a, b = next(online.train), next(prepared.train)
        assert b["input_ids"].dtype == np.int32
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(
        prepared.eval_batches()[0]["targets"], online.eval_batches()[0]["targets"]
    )
    (tmp_path / "prep" / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="interrupted"):
        lm.build_lm_data(
            {"source": "prepared", "prepared_dir": str(tmp_path / "prep")},
            seed=1,
            global_batch_size=4,
        )
