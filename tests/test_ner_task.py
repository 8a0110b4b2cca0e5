"""Token tagging: the CoNLL / two-column readers and their errors, IOB1/IOBES -> IOB2, first-piece
features split over rows, and a tiny run of configs/ner.py predicted with bertjax.predict."""

import json
import pathlib

import numpy as np
import pytest

from bertjax import ner_metrics
from bertjax.data import conll

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tokenizer(minilm_dir):
    from bertjax.data.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer.from_vocab_file(str(minilm_dir / "vocab.txt"), do_lower_case=True)


def test_conll_and_two_column_files(tmp_path, shared_data):
    train = conll.read_conll(str(shared_data / "ner/conll2003/train.txt"))
    assert len(train) == 14041  # CoNLL-2003's training sentences, -DOCSTART- lines skipped
    assert train[0].tokens[:3] == ("EU", "rejects", "German")
    assert train[0].tags[:3] == ("B-ORG", "O", "B-MISC")
    names = conll.tag_names(train)
    assert names[0] == "O" and len(names) == 9 and names[1:3] == ["B-LOC", "I-LOC"]
    wnut = conll.read_conll(str(shared_data / "ner/wnut17/wnut17train.conll"))
    assert len(wnut) > 3000 and all(len(s.tokens) == len(s.tags) for s in wnut)


def test_schemes_convert_to_iob2_with_the_same_entities():
    where = [f"f:{i}" for i in range(6)]
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]
    iobes = ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "S-ORG"]
    want = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]
    assert conll.to_iob2(iob1, where) == want
    assert conll.to_iob2(iobes, where) == want
    assert conll.to_iob2(want, where) == want
    for tags in (iob1, iobes):  # the conversion keeps conlleval's entities
        assert ner_metrics.get_entities(tags) == ner_metrics.get_entities(want)
    with pytest.raises(conll.ConllDataError, match=r"f:1: tag 'E-PER' is not in the iob2"):
        conll.to_iob2(iobes, where, "iob2")


def test_bad_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ\n")
    with pytest.raises(conll.ConllDataError, match=r"bad.txt:4: 2 columns, expected 3"):
        conll.read_conll(str(bad))
    bad.write_text("EU U-ORG\n")
    with pytest.raises(conll.ConllDataError, match=r"bad.txt:1: tag 'U-ORG'"):
        conll.read_conll(str(bad))
    bad.write_text("EU\n")
    with pytest.raises(conll.ConllDataError, match=r"bad.txt:1: one column"):
        conll.read_conll(str(bad))


def test_first_piece_labels_and_long_sentences_split_between_words(minilm_dir):
    tok = _tokenizer(minilm_dir)
    words = ["Unaffable", "Blackburn", "visited", "Ouagadougou", "yesterday", "."] * 3
    tags = [[1, 2, 0, 3, 0, 0] * 3]
    feats = conll.featurize_words([words], tok, 12, tags)
    assert len(feats["input_ids"]) > 1  # split over rows
    assert feats["attention_mask"].sum() - 2 * len(feats["input_ids"]) == sum(
        len(p) for p in tok.encode_batch(words)
    )
    # each word labelled once, on its first piece, in order
    per_word = conll.words_from_rows(feats, feats["labels"], [len(words)])[0]
    np.testing.assert_array_equal(per_word, tags[0])
    assert (feats["labels"] >= 0).sum() == len(words)
    first = feats["input_ids"][0, 1 : 1 + len(tok.encode("Unaffable"))]
    assert list(first) == tok.encode("Unaffable")


def _write_tagged(path, n):
    people, places = ["Alice", "Bob", "Carol", "Dave"], ["Paris", "Rome", "Oslo", "Lima"]
    lines = ["-DOCSTART- O", ""]
    for i in range(n):
        p, q = people[i % 4], places[(i // 4) % 4]
        lines += [f"{p} I-PER", "Smith I-PER", "went O", "to O", f"{q} I-LOC", ". O", ""]  # IOB1
    path.write_text("\n".join(lines))
    return str(path)


@pytest.mark.slow  # ~1-2 min on the shared 2-core machine
def test_ner_config_trains_evaluates_and_predicts(tmp_path, minilm_dir):
    from absl import flags

    from bertjax import config_lib, predict, train

    config = config_lib.load(
        str(REPO / "configs" / "ner.py"),
        {
            "model.preset": "tiny",
            "data.vocab_file": str(minilm_dir / "vocab.txt"),
            "data.train_file": _write_tagged(tmp_path / "train.txt", 64),
            "data.validation_file": _write_tagged(tmp_path / "dev.txt", 16),
            "data.max_seq_length": 16,
            "batch_size": 16,
            "num_train_epochs": 4.0,
            "optim.learning_rate": 3e-3,
        },
    )
    workdir = tmp_path / "run"
    train.run(config, workdir)
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "eval/f1" in r][-1]
    assert {"eval/precision", "eval/recall", "eval/f1_PER", "eval/f1_LOC"} <= set(last)
    assert last["eval/f1"] >= 0.9, last
    lines = (workdir / "predictions_eval.conll").read_text().split("\n\n")
    assert lines[0].splitlines()[0].split()[:2] == ["Alice", "B-PER"]
    manifest = json.loads((workdir / "run.json").read_text())
    assert manifest["label_names"] == ["O", "B-LOC", "B-PER", "I-PER"]

    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "Carol Smith went to Oslo."}) + "\n")
    out = tmp_path / "entities.jsonl"
    flags.FLAGS.unparse_flags()
    predict._define_flags()
    flags.FLAGS(["predict", f"--workdir={workdir}", f"--input={texts}", f"--output={out}"])
    predict.main(["predict"])
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    got = [(e["type"], e["start"], e["end"], e["text"]) for e in row["entities"]]
    assert got == [("PER", 0, 11, "Carol Smith"), ("LOC", 20, 24, "Oslo")]


def test_span_prediction_inputs_name_file_and_line(tmp_path):
    from bertjax import predict_spans
    from bertjax.inference import ner as ner_inference

    bad = tmp_path / "in.jsonl"
    bad.write_text('{"text": "a"}\n\n{"text": \n')
    with pytest.raises(predict_spans.InputError, match=r"in.jsonl:3: not valid JSON"):
        predict_spans.read_jsonl(str(bad))
    bad.write_text('{"text": "a"}\n[1]\n')
    with pytest.raises(predict_spans.InputError, match=r"in.jsonl:2: expected a JSON object"):
        predict_spans.read_jsonl(str(bad))
    with pytest.raises(predict_spans.InputError, match=r"f.jsonl:4: no field 'question'"):
        predict_spans._text("f.jsonl", 4, {"q": "x"}, "question")
    # words keep their character spans; punctuation splits off, inner hyphens stay
    text = "Jean-Luc went to the U.S., didn't he?"
    words = ner_inference.split_words(text)
    assert [w for w, _, _ in words][:4] == ["Jean-Luc", "went", "to", "the"]
    assert all(text[s:e] == w for w, s, e in words)
    assert "didn't" in [w for w, _, _ in words]
