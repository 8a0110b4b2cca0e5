"""Chinese text on real data: ChnSentiCorp reviews and bert-base-chinese's vocabulary.

* bertjax's WordPiece gives the token ids transformers' `BertTokenizer(vocab=...)` gives
  (do_lower_case, tokenize_chinese_chars), row for row on real sentences.
* Reviews used as a pretraining corpus split into several sentences each, so next-sentence
  prediction gets real "IsNext" pairs (before Chinese splitting: one "sentence" per review and
  every NSP label "random next").
"""

import importlib.util
import pathlib
import re

import numpy as np
import pytest

from bertjax.data.pipeline import build_pretraining_data
from bertjax.data.sentences import split_sentences
from bertjax.data.settings import default_data_config
from bertjax.data.tokenizer import WordPieceTokenizer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _reviews(shared_data, split="train.tsv"):
    """The text column of a ChnSentiCorp file (last field; the header row skipped)."""
    path = shared_data / "chinese" / "chnsenticorp" / split
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t")[-1] == "text_a", f"{path}: unexpected header {lines[0]!r}"
    return [line.split("\t")[-1] for line in lines[1:] if line]


def _vocab(shared_data):
    return str(shared_data / "chinese" / "bert-base-chinese" / "vocab.txt")


def _parity_sentences(shared_data):
    """A few hundred real sentences, most with Latin letters, digits or unusual punctuation."""
    sentences = [s for r in _reviews(shared_data, "dev.tsv") for s in split_sentences(r)]
    mixed = [s for s in sentences if re.search(r"[A-Za-z0-9\uff10-\uff5a]", s)][:250]
    odd = [s for s in sentences if re.search(r"[～~…—\u3000-\u303f\uff01-\uff0f（）【】《》]", s)]
    plain = sentences[:100]
    # ChnSentiCorp has no emoji; real sentences with emoji (outside the vocabulary) appended.
    emoji = [f"{s}😀👍🏻❤️" for s in sentences[100:130]]
    picked = list(dict.fromkeys(mixed + odd[:100] + plain + emoji))
    assert len(picked) >= 300
    return picked


def test_wordpiece_matches_transformers_bert_tokenizer(shared_data):
    transformers = pytest.importorskip("transformers")
    vocab = _vocab(shared_data)
    # `vocab=`, not `vocab_file=`: transformers 5 silently ignores `vocab_file`.
    theirs = transformers.BertTokenizer(
        vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True
    )
    ours = WordPieceTokenizer.from_vocab_file(vocab, do_lower_case=True)
    assert ours.vocab_size == len(theirs.get_vocab()) == 21128
    sentences = _parity_sentences(shared_data)
    expected = [theirs(s, add_special_tokens=False)["input_ids"] for s in sentences]
    got = ours.encode_batch(sentences)
    for s, e, g in zip(sentences, expected, got, strict=True):
        assert g == e, (
            f"{s!r}: ours {ours.convert_ids_to_tokens(g)} theirs {theirs.convert_ids_to_tokens(e)}"
        )
    # The cases that matter for Chinese BERT did occur: CJK characters one token each, Latin
    # words lower-cased into WordPieces, full-width forms, emoji as [UNK].
    tokens = {t for g in got for t in ours.convert_ids_to_tokens(g)}
    assert {"[UNK]", "的", "，"} <= tokens
    assert any(t.startswith("##") for t in tokens)
    assert not any(re.search("[A-Z]", t) for t in tokens if t not in ("[UNK]",))


def test_reviews_as_a_corpus_give_sentence_pairs_for_nsp(shared_data, tmp_path):
    """3,000 ChnSentiCorp reviews, one document each: several sentences per document, and a
    realistic share of "random next" NSP labels (it was 1.0 when Chinese was not split)."""
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n\n".join(_reviews(shared_data)[:3000]) + "\n", encoding="utf-8")
    cfg = default_data_config()
    cfg.source = "text_files"
    cfg.text_files = str(corpus)
    cfg.text_format = "paragraphs"
    cfg.vocab_file = _vocab(shared_data)
    cfg.do_lower_case = True
    cfg.max_seq_length = 128
    data = build_pretraining_data(cfg, seed=0, local_batch_size=256)
    stats = data.stats
    assert stats.documents_in == 3000 and stats.documents_kept > 2800
    assert stats.sentences_kept / stats.documents_kept > 3.0
    it = data.train_iterator()
    labels = np.concatenate([next(it)["next_sentence_labels"] for _ in range(8)])
    share = float(labels.mean())
    # google-research/bert's rule (a chunk of one sentence always takes a random B) and the
    # reviews that are a single sentence keep this above 0.5; unsplit Chinese gave 1.0.
    assert 0.55 < share < 0.75, share
    eval_labels = np.concatenate([b["next_sentence_labels"] for b in data.eval_iterator(2)])
    assert 0.0 < eval_labels.mean() < 0.9


def test_tiny_chinese_pretrain_config_reads_reviews_with_the_chinese_vocab(shared_data, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bert_tiny_chinese_pretrain", REPO_ROOT / "configs" / "bert_tiny_chinese_pretrain.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    # Its default vocabulary is the shared bert-base-chinese one, relative to the repo root.
    assert (REPO_ROOT / config.data.vocab_file).resolve() == pathlib.Path(
        _vocab(shared_data)
    ).resolve()
    assert config.model.num_layers == 2 and config.optim.name == "adamw"  # the tiny config's
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n\n".join(_reviews(shared_data)[:300]) + "\n", encoding="utf-8")
    config.data.text_files = str(corpus)
    config.data.vocab_file = _vocab(shared_data)
    data = build_pretraining_data(config.data, seed=0, local_batch_size=8)
    assert data.vocab_size == 21128 and data.sentence_objective == "nsp"
    batch = next(data.train_iterator())
    tokens = data.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[0] == "[CLS]" and any(re.fullmatch(r"[\u4e00-\u9fff]", t) for t in tokens)
