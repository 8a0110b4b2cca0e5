"""GLUE data: the TSV reader on every task's layout and on bad rows, the TFDS path under
`tfds.testing.mock_data`, featurisation (truncation, pairs, padding) and the batch iterators."""

import logging
import random

import numpy as np
import pytest

from bertjax.data import glue

# A miniature GLUE tree in the layout of GLUE's download script, with real rows (quotes and
# all). Each entry: path -> lines; labels below are what the first row must parse to.
MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER.replace("\tlabel1\tgold_label", "")
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
PARSE = "( ( a ) )\t( ( b ) )\t(ROOT (S a))\t(ROOT (S b))"

GLUE_TREE = {
    "CoLA/train.tsv": ['gj04\t1\t\tOur friends won\'t buy this analysis, let alone "the next".'],
    "CoLA/dev.tsv": ['cj99\t0\t*\t"Bill, she said, left.'],  # an unbalanced quote is plain text
    "CoLA/test.tsv": ["index\tsentence", "0\tBill whistled past the house."],
    "SST-2/train.tsv": ["sentence\tlabel", "hide new secretions from the parental units \t0"],
    "SST-2/dev.tsv": ["sentence\tlabel", "it 's a charming and often affecting journey . \t1"],
    "SST-2/test.tsv": ["index\tsentence", "0\tuneasy mishmash of styles and genres ."],
    "MRPC/train.tsv": [
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t702876\t702977\tAmrozi called him " the witness " .\tAmrozi said " the witness " .',
    ],
    "MRPC/dev.tsv": [
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        "0\t1\t2\tHe left .\tShe came .",
    ],
    "MRPC/test.tsv": ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tA is B .\tB is A ."],
    "STS-B/train.tsv": [
        STSB_HEADER + "\tscore",
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
        "An air plane is taking off.\t5.000",
    ],
    "STS-B/dev.tsv": [
        STSB_HEADER + "\tscore",
        "3\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man is dancing.\t"
        "A man sings.\t1.250",
    ],
    "STS-B/test.tsv": [
        STSB_HEADER,
        "7\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\t"
        "A girl is brushing her hair.",
    ],
    "QQP/train.tsv": [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        '133273\t213221\t213222\tHow is "life" of a math student?\tWhich level is enough?\t0',
    ],
    "QQP/dev.tsv": [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so "
        "beautiful?\t1",
    ],
    "QQP/test.tsv": ["id\tquestion1\tquestion2", "0\tWhy?\tWhy not?"],
    "MNLI/train.tsv": [
        MNLI_TRAIN_HEADER,
        f"0\t31193\t31193n\tgovernment\t{PARSE}\tConceptually cream skimming has two basic "
        "dimensions.\tProduct and geography are what make cream skimming work.\tneutral\tneutral",
    ],
    "MNLI/dev_matched.tsv": [
        MNLI_DEV_HEADER,
        f"0\t63735\t63735n\tslate\t{PARSE}\tThe new rights are nice enough\tEveryone really "
        "likes the newest benefits\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral",
    ],
    "MNLI/dev_mismatched.tsv": [
        MNLI_DEV_HEADER,
        f"0\t75290\t75290c\tletters\t{PARSE}\tYour contribution helped make it possible.\t"
        "Your contributions were of no help.\tcontradiction\tcontradiction\tcontradiction\t"
        "contradiction\tcontradiction\tcontradiction",
    ],
    "MNLI/test_matched.tsv": [MNLI_TEST_HEADER, f"0\t31\t31n\tslate\t{PARSE}\tA\tB"],
    "MNLI/test_mismatched.tsv": [MNLI_TEST_HEADER, f"0\t32\t32n\tletters\t{PARSE}\tC\tD"],
    "QNLI/train.tsv": [
        "index\tquestion\tsentence\tlabel",
        "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it.\t"
        "not_entailment",
    ],
    "QNLI/dev.tsv": ["index\tquestion\tsentence\tlabel", "0\tWhat?\tThat.\tentailment"],
    "QNLI/test.tsv": ["index\tquestion\tsentence", "0\tWho?\tHim."],
    "RTE/train.tsv": [
        "index\tsentence1\tsentence2\tlabel",
        "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons Found in Iraq.\t"
        "not_entailment",
    ],
    "RTE/dev.tsv": [
        "index\tsentence1\tsentence2\tlabel",
        "0\tA dog runs.\tAn animal runs.\tentailment",
    ],
    "RTE/test.tsv": ["index\tsentence1\tsentence2", "0\tMaude sings.\tMaude is silent."],
    "WNLI/train.tsv": [
        "index\tsentence1\tsentence2\tlabel",
        "0\tI stuck a pin through a carrot. When I pulled it out, it had a hole.\t"
        "The carrot had a hole.\t1",
    ],
    "WNLI/dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tThe drain is clogged.\tIt is.\t0"],
    "WNLI/test.tsv": ["index\tsentence1\tsentence2", "0\tJohn saw Bill.\tHe saw him."],
    "diagnostic/diagnostic.tsv": [
        "index\tsentence1\tsentence2",
        "0\tThe cat sat.\tThe cat did not sit.",
    ],
}

# task -> (split, expected first example) for every labelled and test layout.
EXPECTED = {
    "cola": [
        ("train", ('Our friends won\'t buy this analysis, let alone "the next".', None, 1)),
        ("validation", ('"Bill, she said, left.', None, 0)),
        ("test", ("Bill whistled past the house.", None, None)),
    ],
    "sst2": [
        ("train", ("hide new secretions from the parental units ", None, 0)),
        ("test", ("uneasy mishmash of styles and genres .", None, None)),
    ],
    "mrpc": [
        ("train", ('Amrozi called him " the witness " .', 'Amrozi said " the witness " .', 1)),
        ("test", ("A is B .", "B is A .", None)),
    ],
    "stsb": [
        ("train", ("A plane is taking off.", "An air plane is taking off.", 5.0)),
        ("validation", ("A man is dancing.", "A man sings.", 1.25)),
        ("test", ("A girl is styling her hair.", "A girl is brushing her hair.", None)),
    ],
    "qqp": [
        ("train", ('How is "life" of a math student?', "Which level is enough?", 0)),
        ("test", ("Why?", "Why not?", None)),
    ],
    "mnli": [
        ("train", ("Conceptually cream skimming has two basic dimensions.", None, 2)),
        ("validation_matched", ("The new rights are nice enough", None, 2)),
        ("validation_mismatched", ("Your contribution helped make it possible.", None, 0)),
        ("test_matched", ("A", "B", None)),
        ("test_mismatched", ("C", "D", None)),
    ],
    "qnli": [
        ("train", ("When did the third Digimon series begin?", None, 1)),
        ("test", ("Who?", "Him.", None)),
    ],
    "rte": [("train", ("No Weapons of Mass Destruction Found in Iraq Yet.", None, 1))],
    "wnli": [("train", (None, "The carrot had a hole.", 1)), ("validation", (None, None, 0))],
    "ax": [("test", ("The cat sat.", "The cat did not sit.", None))],
}


def write_tree(root, tree=GLUE_TREE, trailing_newline=True):
    for rel, lines in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""), encoding="utf-8")
    return root


@pytest.fixture
def glue_dir(tmp_path):
    return write_tree(tmp_path / "glue_data")


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_every_task_layout(glue_dir, task):
    for split, (text_a, text_b, label) in EXPECTED[task]:
        examples = glue.load_tsv(task, str(glue_dir), split)
        assert len(examples) == 1, (task, split)
        e = examples[0]
        if text_a is not None:
            assert e.text_a == text_a, (task, split)
        if text_b is not None:
            assert e.text_b == text_b, (task, split)
        assert e.label == label, (task, split)
        assert (e.text_b is not None) == glue.get_task(task).is_pair


def test_indices_come_from_the_index_column(glue_dir):
    assert glue.load_tsv("stsb", str(glue_dir), "test")[0].index == 7
    assert glue.load_tsv("qqp", str(glue_dir), "train")[0].index == 133273
    assert glue.load_tsv("cola", str(glue_dir), "train")[0].index == 0  # no index column


def test_crlf_and_missing_final_newline(tmp_path):
    tree = {"RTE/dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tentailment"]}
    path = write_tree(tmp_path, tree, trailing_newline=False) / "RTE" / "dev.tsv"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    (e,) = glue.read_tsv("rte", str(path), labelled=True)
    assert (e.text_a, e.text_b, e.label) == ("A.", "B.", 0)


def _one_file(tmp_path, rel, lines):
    write_tree(tmp_path, {rel: lines})
    return str(tmp_path / rel)


def test_malformed_rows_name_file_and_line(tmp_path):
    header = STSB_HEADER + "\tscore"
    good = "0\tg\tf\ty\to\ts1\ts2\tA.\tB.\t3.0"
    path = _one_file(tmp_path, "STS-B/dev.tsv", [header, good, "1\tg\tf\ty\to\ts1\ts2\tA.\t3.0"])
    with pytest.raises(
        glue.GlueDataError, match=r"STS-B/dev.tsv:3: malformed row: 9 .* expected 10"
    ):
        glue.read_tsv("stsb", path, labelled=True)
    # A tab inside a "quoted" sentence is still a field separator (quoting is disabled).
    path = _one_file(tmp_path, "CoLA/train.tsv", ['gj04\t1\t\t"Tabs\tinside" quotes.'])
    with pytest.raises(glue.GlueDataError, match=r"CoLA/train.tsv:1: malformed row: 5"):
        glue.read_tsv("cola", path, labelled=True)
    path = _one_file(tmp_path, "CoLA/dev.tsv", ["gj04\t1\tOnly three fields."])
    with pytest.raises(glue.GlueDataError, match=r"CoLA/dev.tsv:1: malformed row: 3"):
        glue.read_tsv("cola", path, labelled=True)


def test_bad_rows_skip_is_logged(tmp_path, caplog):
    lines = [
        "index\tsentence1\tsentence2\tlabel",
        "0\tA.\tB.\tentailment",
        "1\tbroken",
        "2\tC.\tD.\tnot_entailment",
    ]
    path = _one_file(tmp_path, "RTE/train.tsv", lines)
    with caplog.at_level(logging.WARNING):
        examples = glue.read_tsv("rte", path, labelled=True, bad_rows="skip")
    assert [e.index for e in examples] == [0, 2]
    assert "skipped 1 malformed row(s)" in caplog.text and "[3]" in caplog.text


def test_labels_outside_the_set_and_missing_labels(tmp_path):
    path = _one_file(
        tmp_path, "RTE/dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tmaybe"]
    )
    with pytest.raises(glue.GlueDataError, match=r"RTE/dev.tsv:2: label 'maybe' is not one of"):
        glue.read_tsv("rte", path, labelled=True)
    path = _one_file(tmp_path, "CoLA/dev.tsv", ["gj04\t2\t\tA sentence."])
    with pytest.raises(glue.GlueDataError, match=r"dev.tsv:1: label '2' is not one of cola"):
        glue.read_tsv("cola", path, labelled=True)
    path = _one_file(tmp_path, "SST-2/dev.tsv", ["sentence\tlabel", "fine .\t"])
    with pytest.raises(glue.GlueDataError, match=r"SST-2/dev.tsv:2: missing label"):
        glue.read_tsv("sst2", path, labelled=True)
    header = STSB_HEADER + "\tscore"
    for score, why in (("5.5", "outside"), ("high", "not a number"), ("nan", "outside")):
        path = _one_file(
            tmp_path, "STS-B/dev.tsv", [header, f"0\tg\tf\ty\to\ts1\ts2\tA.\tB.\t{score}"]
        )
        with pytest.raises(glue.GlueDataError, match=f"dev.tsv:2: score .*{why}"):
            glue.read_tsv("stsb", path, labelled=True)


def test_empty_split_missing_file_header_and_encoding(tmp_path):
    path = _one_file(tmp_path, "RTE/dev.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(glue.GlueDataError, match=r"RTE/dev.tsv: no rows \(empty split\)"):
        glue.read_tsv("rte", path, labelled=True)
    empty = tmp_path / "CoLA" / "dev.tsv"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(glue.GlueDataError, match="no rows"):
        glue.read_tsv("cola", str(empty), labelled=True)
    with pytest.raises(glue.GlueDataError, match=r"qnli validation split not found: looked for"):
        glue.load_tsv("qnli", str(tmp_path), "validation")
    with pytest.raises(glue.GlueDataError, match="has no split 'validation'"):
        glue.load_tsv("mnli", str(tmp_path), "validation")
    path = _one_file(
        tmp_path, "QNLI/dev.tsv", ["index\tquestion\ttext\tlabel", "0\ta\tb\tentailment"]
    )
    with pytest.raises(
        glue.GlueDataError, match=r"QNLI/dev.tsv:1: header has no column 'sentence'"
    ):
        glue.read_tsv("qnli", path, labelled=True)
    path = tmp_path / "RTE" / "train.tsv"
    path.write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\t\xff\tB\tentailment\n")
    with pytest.raises(glue.GlueDataError, match=r"RTE/train.tsv:2: not valid UTF-8"):
        glue.read_tsv("rte", str(path), labelled=True)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown GLUE task 'mnli-x'; valid tasks: \['ax', 'cola'"
    ):
        glue.get_task("mnli-x")
    assert glue.get_task("STS-B").name == "stsb" and glue.get_task("SST-2").name == "sst2"


def test_shared_glue_data_reads_whole(shared_data):
    """The real CoLA / STS-B / RTE files (row and label counts from their SOURCES.md)."""
    root = str(shared_data / "glue")
    counts = {
        ("cola", "train"): (8551, {1: 6023, 0: 2528}),
        ("cola", "validation"): (1043, {1: 721, 0: 322}),
        ("rte", "train"): (2490, {0: 1249, 1: 1241}),  # 0 = entailment
        ("rte", "validation"): (277, {0: 146, 1: 131}),
    }
    for (task, split), (n, labels) in counts.items():
        examples = glue.load_tsv(task, root, split)
        assert len(examples) == n
        assert {k: sum(e.label == k for e in examples) for k in labels} == labels
    dev = glue.load_tsv("stsb", root, "validation")
    assert len(dev) == 1500 and len(glue.load_tsv("stsb", root, "train")) == 5749
    assert dev[0].text_a == "A man with a hard hat is dancing." and dev[0].label == 5.0


# ---------------------------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------------------------


def test_tfds_path_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.text.glue  # noqa: F401

    kwargs = {"builder_kwargs": {"file_format": "array_record"}}
    with tfds.testing.mock_data(num_examples=6):
        for split in ("validation_matched", "validation_mismatched"):
            examples = glue.load_tfds("mnli", split)
            raw = tfds.data_source("glue/mnli", split=split, **kwargs)
            names = tfds.builder("glue/mnli").info.features["label"].names
            assert len(examples) == len(raw) == 6
            for e, r in zip(examples, raw, strict=True):
                # TFDS's order is entailment, neutral, contradiction; bertjax keeps GLUE's names.
                assert glue.TASKS["mnli"].labels[e.label] == names[int(r["label"])]
                assert e.text_a == r["premise"] and e.text_b == r["hypothesis"]
                assert e.index == int(r["idx"])
        stsb = glue.load_tfds("stsb", "train")
        assert all(isinstance(e.label, float) for e in stsb) and stsb[0].text_b is not None
        cola = glue.load_tfds("cola", "validation")
        raw = tfds.data_source("glue/cola", split="validation", **kwargs)
        assert [e.label for e in cola] == [int(r["label"]) for r in raw]  # 1 = acceptable
        assert all(e.text_b is None for e in cola)
        # The path the training task takes when config.data.data_dir is empty.
        assert len(glue.load_split("rte", "train", data_dir="")) == 6


# ---------------------------------------------------------------------------------------------
# Featurisation
# ---------------------------------------------------------------------------------------------


def _google_truncate(len_a, len_b, budget):
    """google-research/bert run_classifier._truncate_seq_pair, token by token."""
    a, b = list(range(len_a)), list(range(len_b))
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return len(a), len(b)


def test_truncation_is_longest_first_as_google_bert():
    rng = random.Random(0)
    for _ in range(2000):
        la, lb, budget = rng.randint(0, 80), rng.randint(0, 80), rng.randint(1, 100)
        assert glue.truncate_pair_lengths(la, lb, budget) == _google_truncate(la, lb, budget)


def _encode(texts):
    """A stand-in WordPiece: each word's length + 10 is its id."""
    return [[len(w) + 10 for w in t.split()] for t in texts]


def test_featurize_pairs_singles_padding_and_truncation():
    special = glue.SpecialIds(cls=2, sep=3, pad=0)
    pair = [
        glue.GlueExample(0, "a bb", "ccc", 1.5),
        glue.GlueExample(1, "a a a a a a", "b b b b b b", None),  # 12 words into 10 - 3 slots
    ]
    f = glue.featurize(pair, _encode, special, max_seq_length=10, regression=True)
    assert f["input_ids"][0].tolist() == [2, 11, 12, 3, 13, 3, 0, 0, 0, 0]
    assert f["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert f["attention_mask"][0].tolist() == [1] * 6 + [0] * 4
    # 7 tokens of budget: a keeps 4, b keeps 3 (ties pop from b first).
    assert f["input_ids"][1].tolist() == [2, 11, 11, 11, 11, 3, 11, 11, 11, 3]
    assert f["token_type_ids"][1].tolist() == [0] * 6 + [1] * 4
    assert f["labels"].dtype == np.float32 and f["labels"].tolist() == [1.5, 0.0]
    assert f["has_label"].tolist() == [True, False]
    single = [glue.GlueExample(5, "a b c d e f g h i j", None, 1)]
    f = glue.featurize(single, _encode, special, max_seq_length=6, regression=False)
    assert f["input_ids"][0].tolist() == [2, 11, 11, 11, 11, 3]
    assert f["token_type_ids"][0].tolist() == [0] * 6
    assert f["labels"].dtype == np.int32 and f["index"].tolist() == [5]


def test_featurize_matches_transformers_tokenizer(shared_data, minilm_dir):
    """Same ids as transformers' BertTokenizerFast on real GLUE rows (many truncated)."""
    transformers = pytest.importorskip("transformers")
    from bertjax.data.tokenizer import WordPieceTokenizer

    tok = WordPieceTokenizer.from_vocab_file(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    special = glue.SpecialIds(tok.cls_id, tok.sep_id, tok.pad_id)
    for task, length in (("rte", 64), ("cola", 12)):
        examples = glue.load_tsv(task, str(shared_data / "glue"), "validation")
        ours = glue.featurize(examples, tok.encode_batch, special, length, regression=False)
        pair = [e.text_b for e in examples] if examples[0].text_b is not None else None
        theirs = hf(
            [e.text_a for e in examples],
            pair,
            truncation="longest_first",
            max_length=length,
            padding="max_length",
            return_tensors="np",
        )
        assert (ours["attention_mask"].sum(1) == length).sum() > 50  # truncation exercised
        for key in glue.MODEL_KEYS:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{task} {key}")


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def _features(n):
    return {
        "input_ids": np.arange(n, dtype=np.int32)[:, None].repeat(4, 1) + 1,
        "token_type_ids": np.zeros((n, 4), np.int32),
        "attention_mask": np.ones((n, 4), np.int32),
        "labels": np.arange(n, dtype=np.int32) % 2,
    }


def test_train_iterator_epochs_padding_hosts_and_resume():
    n, batch = 10, 4
    hosts = [glue.TrainIterator(_features(n), batch, seed=3, process_index=p, process_count=2)
             for p in range(2)]  # fmt: skip
    assert hosts[0].steps_per_epoch == 3
    epochs = []
    for _ in range(2):
        seen = []
        for _ in range(3):
            parts = [next(h) for h in hosts]
            assert all(p["input_ids"].shape == (2, 4) for p in parts)
            for p in parts:
                real = p["weights"] > 0
                assert (p["input_ids"][~real] == 0).all() and (p["labels"][~real] == 0).all()
                seen += (p["input_ids"][real, 0] - 1).tolist()
        assert sorted(seen) == list(range(n))  # each example exactly once per epoch
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled every epoch

    it = glue.TrainIterator(_features(n), batch, seed=3)
    for _ in range(4):
        next(it)
    state = it.get_state()
    expected = [next(it)["input_ids"].tolist() for _ in range(3)]
    resumed = glue.TrainIterator(_features(n), batch, seed=3)
    resumed.set_state(state)
    assert [next(resumed)["input_ids"].tolist() for _ in range(3)] == expected
    with pytest.raises(ValueError, match="training set changed"):
        glue.TrainIterator(_features(n + 1), batch, seed=3).set_state(state)


def test_eval_batches_cover_the_set_in_order():
    batches = list(glue.eval_batches(_features(5), 4, process_index=1, process_count=2))
    assert len(batches) == 2
    assert batches[0]["input_ids"][:, 0].tolist() == [3, 4]  # rows 2, 3 of the first batch
    assert batches[1]["weights"].tolist() == [
        0.0,
        0.0,
    ]  # host 1's half of the last batch is padding
