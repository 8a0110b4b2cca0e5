"""Command-line tools: vocabulary training, the batch inspector, offline ArrayRecord preparation."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bertjax.data import build_pretraining_data, default_data_config, embedded_corpus
from bertjax.data.cleaning import CleaningStats, clean_documents
from bertjax.data.prepare import prepare
from bertjax.data.settings import DataSettings
from bertjax.data.shards import METADATA, PreparedInstances, read_metadata
from bertjax.data.tokenizer import read_vocab_file, train_wordpiece_vocab

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [list(d) for d in embedded_corpus.embedded_documents()[:40]]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _write_corpus(directory: pathlib.Path) -> str:
    for i in range(2):
        text = "\n\n".join("\n".join(d) for d in DOCS[20 * i : 20 * i + 20]) + "\n"
        (directory / f"corpus{i}.txt").write_text(text, encoding="utf-8")
    return f"{directory}/corpus*.txt"


def test_train_vocab_cli_matches_the_library_in_another_process(tmp_path):
    pattern = _write_corpus(tmp_path)
    res = _run(
        "bertjax.data.train_vocab",
        f"--input={pattern}",
        "--vocab_size=500",
        f"--output={tmp_path / 'vocab.txt'}",
    )
    assert res.returncode == 0, res.stderr
    assert "files_read=2" in res.stdout
    vocab = read_vocab_file(str(tmp_path / "vocab.txt"))
    # Another process, same text: the same vocabulary, token for token (ids must agree on every
    # host of a job).
    docs = clean_documents(DOCS, min_document_chars=20, dedup_documents=True, stats=CleaningStats())
    sentences = [s for d in docs for s in d]
    assert vocab == train_wordpiece_vocab(sentences, vocab_size=500, do_lower_case=True)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(vocab) == 500


def test_inspect_cli_writes_the_arrays_and_marks_masks(tmp_path):
    out = tmp_path / "batches.npz"
    res = _run(
        "bertjax.data.inspect",
        "--config=configs/bert_tiny_pretrain.py",
        "--config.data.vocab_size=800",
        "--config.data.max_seq_length=64",
        "--config.batch_size=4",
        "--config.seed=3",
        "--num_batches=2",
        f"--output={out}",
        f"--vocab_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr
    arrays = np.load(out)
    assert sorted(arrays.files) == sorted(
        [
            "input_ids",
            "token_type_ids",
            "attention_mask",
            "masked_lm_positions",
            "masked_lm_ids",
            "masked_lm_weights",
            "next_sentence_labels",
        ]
    )
    assert arrays["input_ids"].shape == (8, 64) and arrays["masked_lm_ids"].shape == (8, 20)
    assert "[MASK:" in res.stdout and "next_sentence_label=" in res.stdout
    share = arrays["next_sentence_labels"].mean()
    assert f"next_sentence_labels: {share:.3f} random/swapped over 8 rows" in res.stdout
    # The file holds the pipeline's batches exactly (same seed, same vocabulary).
    cfg = default_data_config()
    cfg.vocab_size, cfg.max_seq_length = 800, 64
    data = build_pretraining_data(cfg, seed=3, local_batch_size=4, vocab_dir=str(tmp_path))
    it = data.train_iterator()
    expected = np.concatenate([next(it)["input_ids"], next(it)["input_ids"]])
    np.testing.assert_array_equal(arrays["input_ids"], expected)
    # An unknown key fails and names it.
    bad = _run(
        "bertjax.data.inspect",
        "--config=configs/bert_tiny_pretrain.py",
        "--config.data.max_seq_len=64",
        f"--output={out}",
    )
    assert bad.returncode != 0 and "max_seq_len" in bad.stderr


def _settings(**kw) -> DataSettings:
    cfg = default_data_config()
    cfg.vocab_size, cfg.max_seq_length, cfg.max_predictions_per_seq = 600, 64, 10
    cfg.dupe_factor, cfg.eval_fraction = 2, 0.1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return DataSettings.from_config(cfg)


def test_prepare_writes_array_record_shards_that_train_reads(tmp_path):
    pattern = _write_corpus(tmp_path)
    out = tmp_path / "prepared"
    settings = _settings(source="text_files", text_files=pattern)
    meta = prepare(
        settings, output_dir=str(out), seed=0, num_shards=3, num_workers=1, progress=False
    )
    assert len(meta["train_files"]) == 3 and meta["num_train"] > 100 and meta["num_eval"] > 0
    assert meta["stats"]["files_read"] == 2 and (out / METADATA).exists()
    assert read_metadata(str(out))["dtype"] == "<u2"
    with pytest.raises(FileExistsError):
        prepare(settings, output_dir=str(out), seed=0, num_shards=3, num_workers=1, progress=False)

    cfg = default_data_config()
    cfg.source, cfg.prepared_dir, cfg.max_seq_length, cfg.max_predictions_per_seq = (
        "prepared",
        str(out),
        64,
        10,
    )
    data = build_pretraining_data(cfg, seed=0, local_batch_size=8)
    it = data.train_iterator()
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(meta["num_train"] // 8 + 1)]  # crosses an epoch
    it2 = build_pretraining_data(cfg, seed=0, local_batch_size=8).train_iterator()
    it2.set_state(json.loads(json.dumps(state)))
    for b in expected:
        got = next(it2)
        for k in b:
            np.testing.assert_array_equal(b[k], got[k], err_msg=k)
    batch = expected[0]
    tok = data.tokenizer
    assert (batch["input_ids"][:, 0] == tok.cls_id).all()
    n_sep = (batch["input_ids"] == tok.sep_id).sum(1)
    masked_sep = ((batch["masked_lm_ids"] == tok.sep_id) & (batch["masked_lm_weights"] > 0)).sum(1)
    np.testing.assert_array_equal(n_sep + masked_sep, 2)  # [SEP] is never a masking target
    assert masked_sep.sum() == 0
    assert len(list(data.eval_iterator(2))) == 2

    # Hosts take disjoint strided records that together cover every record.
    hosts = [
        PreparedInstances(
            str(out),
            meta["train_files"],
            np.dtype("<u2"),
            seed_parts=(0,),
            process_index=i,
            process_count=2,
        )
        for i in range(2)
    ]
    k0, k1 = set(hosts[0]._keys.tolist()), set(hosts[1]._keys.tolist())
    assert not k0 & k1 and k0 | k1 == set(range(meta["num_train"]))

    # A config that does not match what was prepared is refused, naming the key.
    cfg.max_seq_length = 128
    with pytest.raises(ValueError, match="data.max_seq_length=128"):
        build_pretraining_data(cfg, seed=0, local_batch_size=8)


@pytest.mark.slow
def test_prepare_cli_with_parallel_workers(tmp_path):
    pattern = _write_corpus(tmp_path)
    out = tmp_path / "prepared"
    res = _run(
        "bertjax.data.prepare",
        "--config=configs/bert_tiny_pretrain.py",
        "--config.data.source=text_files",
        f"--config.data.text_files={pattern}",
        "--config.data.vocab_size=600",
        "--config.data.max_seq_length=64",
        f"--output_dir={out}",
        "--num_shards=4",
        "--num_workers=2",
    )
    assert res.returncode == 0, res.stderr
    assert "prepare shards" in res.stderr  # the progress bar
    meta = read_metadata(str(out))
    assert len(meta["train_files"]) == 4 and meta["num_train"] > 0
    # The same input prepared in one process gives byte-identical shards.
    single = tmp_path / "single"
    settings = _settings(source="text_files", text_files=pattern, dupe_factor=5, eval_fraction=0.02)
    prepare(settings, output_dir=str(single), seed=0, num_shards=4, num_workers=1, progress=False)
    for name in meta["train_files"]:
        assert (out / name).read_bytes() == (single / name).read_bytes()
