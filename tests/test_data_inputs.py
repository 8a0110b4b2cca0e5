"""Text sources, cleaning, tokenizer, config keys, and every kind of bad input in the issue."""

import logging
import pathlib

import numpy as np
import pytest

from bertjax.data import (
    DataSourceError,
    VocabError,
    WordPieceTokenizer,
    build_pretraining_data,
    embedded_corpus,
)
from bertjax.data.cleaning import CleaningStats, clean_documents, normalize_text
from bertjax.data.sources import read_text_files
from bertjax.data.tokenizer import read_vocab_file

REPO = pathlib.Path(__file__).resolve().parents[1]
# Real English (the embedded corpus), written out as files for the file-based tests.
DOCS = [list(d) for d in embedded_corpus.embedded_documents()[:12]]


def _config(**overrides):
    from bertjax.data import default_data_config

    cfg = default_data_config()
    cfg.vocab_size = 600
    cfg.max_seq_length = 64
    cfg.max_predictions_per_seq = 10
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def _bert_format(docs) -> str:
    return "\n\n".join("\n".join(d) for d in docs) + "\n"


# --- sources ----------------------------------------------------------------------------------


def test_bert_and_paragraph_layouts(tmp_path):
    (tmp_path / "bert.txt").write_text(_bert_format(DOCS[:3]), encoding="utf-8")
    paragraphs = "\n\n".join(" ".join(d) for d in DOCS[:3])
    (tmp_path / "para.txt").write_text(paragraphs, encoding="utf-8")
    stats = CleaningStats()
    bert = read_text_files(
        str(tmp_path / "bert.txt"), text_format="bert", unicode_errors="strict", stats=stats
    )
    assert bert == DOCS[:3]
    para = read_text_files(
        str(tmp_path / "para.txt"), text_format="paragraphs", unicode_errors="strict", stats=stats
    )
    assert len(para) == 3
    # Sentences come back (nearly) as they were split; at least most match exactly.
    matches = sum(s in set(DOCS[k]) for k in range(3) for s in para[k])
    assert matches >= 0.8 * sum(len(d) for d in DOCS[:3])


def test_globs_and_comma_lists(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(_bert_format(DOCS[4 * i : 4 * i + 4]))
    stats = CleaningStats()
    spec = f"{tmp_path}/part[01].txt, {tmp_path}/part2.txt"
    docs = read_text_files(spec, text_format="bert", unicode_errors="strict", stats=stats)
    assert docs == DOCS[:12] and stats.files_read == 3


def test_embedded_corpus_is_clean_english_prose():
    docs = embedded_corpus.embedded_documents()
    sentences = [s for d in docs for s in d]
    assert len(docs) > 150 and sum(map(len, sentences)) > 200_000
    assert not any(s.startswith((">>>", "...", "+--", "|")) or "::=" in s for s in sentences)
    common = {"the", "is", "of", "a", "to"}
    with_common = sum(bool(common & set(s.lower().split())) for s in sentences)
    assert with_common / len(sentences) > 0.85
    assert len(embedded_corpus.corpus_fingerprint()) == 64


# --- cleaning ---------------------------------------------------------------------------------


def test_cleaning_normalises_and_counts_every_drop():
    stats = CleaningStats()
    raw = [
        ["Cafe\u0301 au lait\x00 is a drink\u200b.", "It is  hot."],  # NFD, NUL, zero-width
        ["   ", "\x07"],  # empty after cleaning
        ["Too short."],
        ["Cafe\u0301 au lait is a drink.", "It is hot."],  # a duplicate after normalisation
        ["A different document with enough text."],
    ]
    kept = list(clean_documents(raw, min_document_chars=20, dedup_documents=True, stats=stats))
    assert kept == [
        ["Caf\u00e9 au lait is a drink.", "It is hot."],
        ["A different document with enough text."],
    ]
    assert (stats.documents_in, stats.documents_kept) == (5, 2)
    assert (stats.dropped_empty, stats.dropped_too_short, stats.dropped_duplicate) == (1, 1, 1)
    assert stats.control_chars_removed == 3  # NUL, zero-width space, BEL
    assert normalize_text("a\tb \u00a0 c") == "a b c"
    # Dedup is configurable.
    stats2 = CleaningStats()
    kept2 = list(clean_documents(raw, min_document_chars=20, dedup_documents=False, stats=stats2))
    assert len(kept2) == 3 and stats2.dropped_duplicate == 0


# --- tokenizer --------------------------------------------------------------------------------


def test_vocab_txt_tokenization_matches_transformers(minilm_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    ours = WordPieceTokenizer.from_vocab_file(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    texts = [s for d in DOCS for s in d][:200] + ["Héllo WORLD, naïve café — 東京 x²!"]
    for text in texts:
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
    assert (ours.pad_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 101, 102, 103)
    ids = ours.encode("The quick brown fox.")
    assert ours.decode(ids) == "the quick brown fox."


def test_cased_vocabulary_keeps_case(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello", "##s", "."]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    cased = WordPieceTokenizer.from_vocab_file(str(path), do_lower_case=False)
    uncased = WordPieceTokenizer.from_vocab_file(str(path), do_lower_case=True)
    assert cased.convert_ids_to_tokens(cased.encode("Hello hellos.")) == [
        "Hello",
        "hello",
        "##s",
        ".",
    ]
    assert uncased.convert_ids_to_tokens(uncased.encode("Hello")) == ["hello"]


# --- bad input --------------------------------------------------------------------------------


def test_missing_file_and_unmatched_glob_name_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        build_pretraining_data(
            _config(source="text_files", text_files=str(tmp_path / "nope.txt")),
            seed=0,
            local_batch_size=2,
        )
    with pytest.raises(DataSourceError, match=r"pattern .*\*\.txt.* matches no file"):
        build_pretraining_data(
            _config(source="text_files", text_files=f"{tmp_path}/*.txt"), seed=0, local_batch_size=2
        )


def test_empty_file_alone_is_an_error_among_others_a_counted_warning(tmp_path, caplog):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match=r"empty\.txt.*0 training document.*empty_files=1"):
        build_pretraining_data(
            _config(source="text_files", text_files=str(empty)), seed=0, local_batch_size=2
        )
    (tmp_path / "full.txt").write_text(_bert_format(DOCS))
    with caplog.at_level(logging.WARNING):
        data = build_pretraining_data(
            _config(source="text_files", text_files=f"{tmp_path}/*.txt"), seed=0, local_batch_size=2
        )
    assert data.stats.empty_files == 1 and data.stats.files_read == 2
    assert "empty.txt is empty" in caplog.text
    next(data.train_iterator())


def test_non_utf8_is_an_error_with_byte_offset_or_replaced_and_counted(tmp_path):
    good = _bert_format(DOCS).encode()
    bad = good[:100] + b"\xff\xfe" + good[100:] + b"\xc3"
    path = tmp_path / "latin.txt"
    path.write_bytes(bad)
    cfg = _config(source="text_files", text_files=str(path))
    with pytest.raises(DataSourceError, match=r"latin\.txt: invalid UTF-8 at byte offset 100"):
        build_pretraining_data(cfg, seed=0, local_batch_size=2)
    cfg.unicode_errors = "replace"
    data = build_pretraining_data(cfg, seed=0, local_batch_size=2)
    assert data.stats.unicode_replacements == 3
    next(data.train_iterator())


def test_single_document_is_an_error_for_nsp_but_fine_for_sop_and_none(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(_bert_format([sum(DOCS, [])]))
    cfg = _config(source="text_files", text_files=str(path), eval_fraction=0.0)
    with pytest.raises(ValueError, match=r"1 training document.*needs at least 2 documents"):
        build_pretraining_data(cfg, seed=0, local_batch_size=2)
    for objective in ("sop", "none"):
        cfg.sentence_objective = objective
        batch = next(build_pretraining_data(cfg, seed=0, local_batch_size=4).train_iterator())
        assert batch["input_ids"].shape == (4, 64)


def test_vocabulary_without_specials_or_with_duplicates_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(VocabError, match=r"vocab\.txt.*lacks.*\[MASK\]"):
        read_vocab_file(str(path))
    with pytest.raises(VocabError, match=r"lacks.*\[MASK\]"):
        build_pretraining_data(_config(vocab_file=str(path)), seed=0, local_batch_size=2)
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n")
    with pytest.raises(VocabError, match="line 7 duplicates line 6"):
        read_vocab_file(str(path))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_vocab_file(str(tmp_path / "missing.txt"))


def test_config_errors_name_the_key():
    with pytest.raises(KeyError, match="data.max_seq_len"):
        cfg = _config()
        cfg.unlock() if hasattr(cfg, "unlock") else None
        cfg.max_seq_len = 3
        build_pretraining_data(cfg, seed=0, local_batch_size=2)
    cases = {
        "sentence_objective": ("mlm", "data.sentence_objective"),
        "masked_lm_prob": (1.5, "data.masked_lm_prob"),
        "max_predictions_per_seq": (0, "data.max_predictions_per_seq"),
        "source": ("web", "data.source"),
        "unicode_errors": ("ignore", "data.unicode_errors"),
        "max_seq_length": (3, "data.max_seq_length"),
    }
    for key, (value, name) in cases.items():
        with pytest.raises(ValueError, match=name):
            build_pretraining_data(_config(**{key: value}), seed=0, local_batch_size=2)
    with pytest.raises(TypeError, match="data.do_whole_word_mask"):
        cfg = _config()
        del cfg["do_whole_word_mask"]
        cfg.do_whole_word_mask = "yes"
        build_pretraining_data(cfg, seed=0, local_batch_size=2)


# --- TFDS ---------------------------------------------------------------------------------------


def test_tfds_source_under_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    examples = [{"text": "\n".join(d).encode()} for d in DOCS]
    examples.append({"text": b"Bad byte \xff here. Still a document with text."})

    def fake_source(builder, split, **kwargs):
        assert builder.name == "lm1b" and split == "train"
        return examples

    vocab = tmp_path / "vocab.txt"
    build_pretraining_data(_config(), seed=0, local_batch_size=2, vocab_dir=str(tmp_path))
    cfg = _config(
        source="tfds",
        tfds_name="lm1b",
        vocab_file=str(vocab),
        eval_fraction=0.0,
        unicode_errors="replace",
    )
    with tfds.testing.mock_data(num_examples=len(examples), as_data_source_fn=fake_source):
        single = build_pretraining_data(cfg, seed=0, local_batch_size=4)
        hosts = [
            build_pretraining_data(
                cfg, seed=0, local_batch_size=4, process_index=i, process_count=2
            )
            for i in range(2)
        ]
        cfg.unicode_errors = "strict"
        with pytest.raises(DataSourceError, match=r"lm1b\[train\] example 12 .*byte offset 9"):
            build_pretraining_data(cfg, seed=0, local_batch_size=4)
        cfg.tfds_text_key = "body"
        with pytest.raises(DataSourceError, match="no field data.tfds_text_key='body'"):
            build_pretraining_data(cfg, seed=0, local_batch_size=4)

    # Host 0 reads examples 0, 2, 4, ...; host 1 reads 1, 3, 5, ...: disjoint, covering all.
    def doc_set(data):
        c = data._train_source.corpus
        s, d, t = c.sentence_starts, c.document_starts, c.tokens
        return {tuple(t[s[d[k]] : s[d[k + 1]]].tolist()) for k in range(c.num_documents)}

    h0, h1 = doc_set(hosts[0]), doc_set(hosts[1])
    assert h0 and h1 and not h0 & h1 and h0 | h1 == doc_set(single)
    assert hosts[0].stats.documents_in == 7 and hosts[1].stats.documents_in == 6
    # Example 12 (host 0) has the undecodable byte.
    assert hosts[0].stats.unicode_replacements == 1 and hosts[1].stats.unicode_replacements == 0
    batch = next(hosts[0].train_iterator())
    assert (
        batch["input_ids"].shape == (4, 64)
        and np.isin(batch["input_ids"][:, 0], [hosts[0].tokenizer.cls_id]).all()
    )


def test_tfds_without_vocab_file_is_refused():
    with pytest.raises(ValueError, match="needs data.vocab_file"):
        build_pretraining_data(_config(source="tfds", tfds_name="lm1b"), seed=0, local_batch_size=2)
