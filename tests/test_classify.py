"""The user's own files: readers (CSV/TSV/JSONL, BOM, CRLF, quoting), label handling, every bad
input of issue 14 (each an error naming file and line, or skipped and counted), the metrics per
problem type, and a tiny run of configs/classify.py predicted with bertjax.predict."""

import json
import pathlib
import random

import numpy as np
import pytest

from bertjax.data import records
from bertjax.tasks import classify

REPO = pathlib.Path(__file__).resolve().parents[1]
COLS = records.Columns("review", "", "sentiment")


def _write(path, text, bom=False, crlf=False):
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


def test_csv_with_bom_crlf_quotes_and_embedded_newlines(tmp_path):
    text = 'review,sentiment\n"great, really",pos\n"two\nlines ""quoted""",neg\nplain,pos\n'
    table = records.read_table(_write(tmp_path / "a.csv", text, bom=True, crlf=True))
    assert table.columns == ["review", "sentiment"]
    assert [r["review"] for r in table.rows] == [
        "great, really",
        'two\r\nlines "quoted"',
        "plain",
    ]
    assert table.lines == [2, 3, 5]  # the line each row starts on
    problem, names = records.training_labels(table, COLS, "auto", ",")
    assert (problem, names) == ("single_label", ["neg", "pos"])
    examples, stats = records.to_examples(table, COLS, problem, names)
    assert [e.label for e in examples] == [1, 0, 1]
    assert (stats.read, stats.used, sum(stats.skipped.values())) == (3, 3, 0)
    assert stats.labels == {"pos": 2, "neg": 1}


def test_tsv_jsonl_and_the_format_override(tmp_path):
    tsv = _write(tmp_path / "a.tsv", 'review\tsentiment\nsay "hi"\t1\nbye\t0\n', crlf=True)
    table = records.read_table(tsv)
    assert [r["review"] for r in table.rows] == ['say "hi"', "bye"]  # quotes are text in TSV
    jsonl = _write(
        tmp_path / "a.jsonl", '{"review": "x", "sentiment": 1}\n\n{"review": "y", "sentiment": 0}\n'
    )
    table = records.read_table(jsonl)
    assert table.lines == [1, 3]
    assert records.training_labels(table, COLS, "auto", ",") == ("single_label", ["0", "1"])
    txt = _write(tmp_path / "a.txt", "review,sentiment\nx,1\n")
    with pytest.raises(
        records.RecordError, match=r"a\.txt: cannot tell the format.*config\.data\.format"
    ):
        records.read_table(txt)
    assert records.read_table(txt, "csv").rows == [{"review": "x", "sentiment": "1"}]


def test_problem_types_auto_multi_label_and_regression(tmp_path):
    reg = records.read_table(_write(tmp_path / "r.csv", "review,sentiment\na,0.5\nb,3\nc,1.25\n"))
    assert records.training_labels(reg, COLS, "auto", ",") == ("regression", None)
    examples, stats = records.to_examples(reg, COLS, "regression", None)
    assert [e.label for e in examples] == [0.5, 3.0, 1.25]
    ints = records.read_table(_write(tmp_path / "i.csv", "review,sentiment\na,10\nb,2\nc,-1\n"))
    assert records.training_labels(ints, COLS, "auto", ",") == ("single_label", ["-1", "2", "10"])
    multi = records.read_table(
        _write(
            tmp_path / "m.jsonl",
            '{"review": "a", "sentiment": ["x", "y"]}\n'
            '{"review": "b", "sentiment": "z"}\n{"review": "c", "sentiment": []}\n',
        )  # fmt: skip
    )
    problem, names = records.training_labels(multi, COLS, "multi_label", ",")
    assert names == ["x", "y", "z"]
    examples, _ = records.to_examples(multi, COLS, problem, names)
    assert [e.label for e in examples] == [(1.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)]
    sep = records.read_table(_write(tmp_path / "s.csv", "review,sentiment\na,x|y\nb,z\n"))
    assert records.training_labels(sep, COLS, "multi_label", "|")[1] == ["x", "y", "z"]


def test_bad_input_is_an_error_naming_file_and_line(tmp_path):
    train = _write(tmp_path / "train.csv", "review,sentiment\ngood,pos\nbad,neg\n")
    names = ["neg", "pos"]
    with pytest.raises(
        records.RecordError,
        match=r"train\.csv: no column 'text' \(config\.data\.text_column\); "
        r"the file's columns: \['review', 'sentiment'\]",
    ):
        records.to_examples(
            records.read_table(train),
            records.Columns("text", "", "sentiment"),
            "single_label",
            names,
        )
    dev = _write(tmp_path / "dev.csv", "review,sentiment\nfine,pos\nmeh,neutral\n")
    with pytest.raises(
        records.RecordError, match=r"dev\.csv:3: label 'neutral' not seen in training"
    ):
        records.to_examples(records.read_table(dev), COLS, "single_label", names)
    empty = _write(tmp_path / "empty.csv", 'review,sentiment\ngood,pos\n"  ",neg\n')
    with pytest.raises(records.RecordError, match=r"empty\.csv:3: empty text in column 'review'"):
        records.to_examples(records.read_table(empty), COLS, "single_label", names)
    reg = _write(tmp_path / "reg.csv", "review,sentiment\na,1.5\nb,high\n")
    with pytest.raises(
        records.RecordError, match=r"reg\.csv:3: regression target 'high' is not a number"
    ):
        records.to_examples(records.read_table(reg), COLS, "regression", None)
    one = _write(tmp_path / "one.csv", "review,sentiment\na,pos\nb,pos\n")
    with pytest.raises(records.RecordError, match=r"one\.csv: the training labels .* hold 1 class"):
        records.training_labels(records.read_table(one), COLS, "auto", ",")
    ragged = _write(tmp_path / "ragged.tsv", "review\tsentiment\na\tpos\textra\n")
    with pytest.raises(records.RecordError, match=r"ragged\.tsv:2: 3 fields, the header has 2"):
        records.read_table(ragged)
    bad_utf8 = tmp_path / "latin.csv"
    bad_utf8.write_bytes(b"review,sentiment\ncaf\xe9,pos\n")
    with pytest.raises(records.RecordError, match=r"latin\.csv:2: not valid UTF-8"):
        records.read_table(str(bad_utf8))


def test_bad_rows_skip_counts_every_reason(tmp_path):
    path = _write(
        tmp_path / "dev.tsv",
        "review\tsentiment\ngood\tpos\n\tneg\nmeh\tneutral\nbad\tneg\nx\ty\tz\nok\t\n",
    )
    table = records.read_table(path, bad_rows="skip")
    examples, stats = records.to_examples(
        table, COLS, "single_label", ["neg", "pos"], bad_rows="skip"
    )
    assert [e.text_a for e in examples] == ["good", "bad"]
    assert stats.read == 6 and stats.used == 2
    assert dict(stats.skipped) == {
        "malformed": 1,
        "empty text": 1,
        "unseen label": 1,
        "missing label": 1,
    }
    assert "6 rows read, 2 used, 4 skipped" in stats.summary()


def test_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    label, pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    m = classify.summarize("single_label", label, pred)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(label, pred))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(label, pred, average="macro"))
    assert m["mcc"] == pytest.approx(sk.matthews_corrcoef(label, pred))
    hot_l, hot_p = rng.integers(0, 2, (100, 4)), rng.integers(0, 2, (100, 4))
    m = classify.summarize("multi_label", hot_l.astype(np.float32), hot_p.astype(np.float32))
    assert m["micro_f1"] == pytest.approx(sk.f1_score(hot_l, hot_p, average="micro"))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(hot_l, hot_p, average="macro"))
    assert m["exact_match"] == pytest.approx(sk.accuracy_score(hot_l, hot_p))


WORDS = ["the", "movie", "was", "film", "plot", "acting", "really", "quite", "very", "a"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", *WORDS]


def _reviews(path, n, rng):
    lines = ["id,review,sentiment"]
    for i in range(n):
        positive = rng.random() < 0.5
        words = rng.sample(WORDS, 3) + ["good" if positive else "bad"]
        rng.shuffle(words)
        lines.append(f'{i},"{" ".join(words)}",{"positive" if positive else "negative"}')
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.slow  # a minute or two on 2 CPU cores: a real (tiny) training run and predictions
def test_classify_config_trains_and_predicts_a_csv(tmp_path):
    from absl import flags

    from bertjax import config_lib, predict, train

    rng = random.Random(0)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    config = config_lib.load(
        str(REPO / "configs" / "classify.py"),
        {
            "model.preset": "tiny",
            "data.vocab_file": str(vocab),
            "data.train_file": _reviews(tmp_path / "train.csv", 64, rng),
            "data.validation_file": _reviews(tmp_path / "dev.csv", 24, rng),
            "data.text_column": "review",
            "data.label_column": "sentiment",
            "data.max_seq_length": 8,
            "batch_size": 16,
            "num_train_epochs": 3.0,
            "optim.learning_rate": 2e-3,
        },
    )
    workdir = tmp_path / "run"
    train.run(config, workdir)
    records_ = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records_ if "eval/accuracy" in r]
    assert {"eval/accuracy", "eval/macro_f1", "eval/mcc", "eval/loss"} <= set(evals[-1])
    assert evals[-1]["eval/accuracy"] >= 0.9, evals
    manifest = json.loads((workdir / "run.json").read_text())
    assert manifest["label_names"] == ["negative", "positive"]
    assert manifest["problem_type"] == "single_label" and manifest["best_metric"] == "eval/accuracy"

    new = tmp_path / "new.csv"
    new.write_text('review,id,note\n"good film, good",7,x\nbad plot,8,"a ""b"""\n')
    out = tmp_path / "pred.csv"
    flags.FLAGS.unparse_flags()
    predict._define_flags()
    flags.FLAGS([
        "predict", f"--workdir={workdir}", f"--input={new}", f"--output={out}",
    ])  # fmt: skip
    predict.main(["predict"])
    rows = records.read_table(str(out)).rows
    assert list(rows[0]) == [
        "review",
        "id",
        "note",
        "prediction",
        "score",
        "p_negative",
        "p_positive",
    ]
    assert [r["prediction"] for r in rows] == ["positive", "negative"]
    assert rows[1]["note"] == 'a "b"' and rows[0]["id"] == "7"
    for r in rows:
        probs = [float(r["p_negative"]), float(r["p_positive"])]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert float(r["score"]) == pytest.approx(max(probs), abs=1e-6)
    out_jsonl = tmp_path / "pred.jsonl"
    flags.FLAGS.output = str(out_jsonl)
    predict.main(["predict"])
    first = json.loads(out_jsonl.read_text().splitlines()[0])
    assert list(first)[:4] == ["review", "id", "note", "prediction"]
    assert set(first["probabilities"]) == {"negative", "positive"}


def _config(tmp_path, train_text, **overrides):
    from bertjax import config_lib

    train = _write(tmp_path / "train.csv", train_text)
    values = {
        "data.train_file": train,
        "data.validation_file": train,
        "data.text_column": "review",
        "data.label_column": "sentiment",
        **overrides,
    }
    return config_lib.load(str(REPO / "configs" / "classify.py"), values)


def test_best_metric_defaults_per_problem_type_and_can_be_chosen(tmp_path):
    labels = "review,sentiment\na,pos\nb,neg\n"
    assert classify.best_metric(_config(tmp_path, labels)) == ("eval/accuracy", "max")
    numbers = "review,sentiment\na,0.5\nb,2.25\n"
    assert classify.best_metric(_config(tmp_path, numbers)) == ("eval/pearson", "max")
    multi = _config(tmp_path, labels, **{"data.problem_type": "multi_label"})
    assert classify.best_metric(multi) == ("eval/micro_f1", "max")
    chosen = _config(tmp_path, labels, best_metric="eval/macro_f1")
    assert classify.best_metric(chosen) == ("eval/macro_f1", "max")
    assert classify.best_metric(_config(tmp_path, labels, best_metric="eval/loss"))[1] == "min"
    with pytest.raises(ValueError, match="config.best_metric='eval/auc'"):
        classify.best_metric(_config(tmp_path, labels, best_metric="eval/auc"))
    no_dev = _config(tmp_path, labels, **{"data.validation_file": ""})
    assert classify.best_metric(no_dev) is None


def test_auto_problem_type_is_logged_once_per_run(tmp_path, caplog):
    """build_data logs how "auto" resolved; best_metric, later in the same run, reads the
    labels again without logging it a second time."""
    config = _config(tmp_path, "review,sentiment\na,pos\nb,neg\n")
    # absl's logger: an earlier in-process run may have set its level (absl's --verbosity).
    with caplog.at_level("INFO", logger="absl"):
        classify.labels_of(config)  # what build_data does first
        classify.best_metric(config)
    logged = [r for r in caplog.records if "problem_type auto" in r.getMessage()]
    assert len(logged) == 1 and "single_label" in logged[0].getMessage()


def test_losses_per_problem_type_over_real_rows():
    import jax.numpy as jnp
    import optax

    from bertjax.tasks import finetune

    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    single = finetune.per_example_loss(logits, jnp.array([0, 2]))
    np.testing.assert_allclose(
        single,
        optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 2])),
        rtol=1e-6,
    )
    hot = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    bce = -(hot * np.log(p) + (1 - hot) * np.log(1 - p)).mean(-1)
    np.testing.assert_allclose(finetune.per_example_loss(logits, hot), bce, rtol=1e-5)
    reg = finetune.per_example_loss(jnp.array([[1.5], [0.0]]), jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(reg, [0.25, 4.0], rtol=1e-6)


@pytest.mark.parametrize("problem", ["multi_label", "regression"])
def test_predict_file_output_columns_per_problem_type(tmp_path, problem):
    import jax

    from bertjax import inference, models, predict_files
    from bertjax.data.tokenizer import WordPieceTokenizer

    names = ["x", "y", "z"] if problem == "multi_label" else None
    cfg = models.get_config(
        "tiny", vocab_size=len(VOCAB), head="classification", num_labels=3 if names else 1
    )
    module = models.build(cfg)
    params = jax.jit(module.init)(jax.random.key(0), models.example_batch(cfg))["params"]
    run = inference.LoadedRun(
        manifest={"data": {"text_column": "review"}},
        model_config=cfg,
        module=module,
        params=params,
        tokenizer=WordPieceTokenizer(VOCAB, do_lower_case=True),
        label_names=names,
        problem_type=problem,
        max_seq_length=8,
    )
    source = _write(tmp_path / "in.tsv", "n\treview\n1\tgood film\n2\tbad\n3\tthe plot\n")
    assert predict_files.predict_file(run, source, str(tmp_path / "out.csv")) == 3
    rows = records.read_table(str(tmp_path / "out.csv")).rows
    assert [r["n"] for r in rows] == ["1", "2", "3"]
    predict_files.predict_file(run, source, str(tmp_path / "out.jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    if problem == "regression":
        assert list(rows[0]) == ["n", "review", "prediction"]
        for row, line in zip(rows, lines, strict=True):
            assert float(row["prediction"]) == pytest.approx(line["prediction"], rel=1e-5)
        return
    assert list(rows[0]) == ["n", "review", "prediction", "p_x", "p_y", "p_z"]
    for row, line in zip(rows, lines, strict=True):
        over = [n for n in names if line["probabilities"][n] > 0.5]
        assert line["prediction"] == over
        assert row["prediction"] == ";".join(over)
        assert float(row["p_y"]) == pytest.approx(line["probabilities"]["y"], abs=1e-6)
