"""SQuAD: the JSON reader's errors, run_squad's windows and offsets, span post-processing, and a
tiny run of configs/squad.py (windows, eval, official-format predictions, bertjax.predict)."""

import json
import pathlib
import random

import numpy as np
import pytest

from bertjax.data import squad
from bertjax.inference import qa as qa_inference

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
COLORS = ["red", "green", "blue", "black", "white", "pink"]
FILLER = ["the", "day", "was", "long", "and", "quiet", "in", "town", "."]


def _tokenizer(minilm_dir):
    from bertjax.data.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer.from_vocab_file(str(minilm_dir / "vocab.txt"), do_lower_case=True)


def _synthetic(path, n, rng):
    """Questions whose answer is the name after "owner is"; filler makes long contexts."""
    paragraphs = []
    for i in range(n):
        name, color = rng.choice(NAMES), rng.choice(COLORS)
        before = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 25)))
        after = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 25)))
        context = f"{before} The {color} car's owner is {name.title()}. {after}"
        start = context.index(name.title())
        qa = {"id": f"q{i}", "question": f"Who owns the {color} car?",
              "answers": [{"text": name.title(), "answer_start": start}]}  # fmt: skip
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": paragraphs}]}))
    return str(path)


def test_bad_squad_files_name_file_and_question(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [')
    with pytest.raises(squad.SquadDataError, match=r"bad.json: not valid JSON \(line 1"):
        squad.read_squad_json(str(bad))
    qa = {"id": "x7", "question": "?", "answers": [{"text": "Paris", "answer_start": 3}]}
    doc = {"data": [{"paragraphs": [{"context": "Paris is big.", "qas": [qa]}]}]}
    bad.write_text(json.dumps(doc))
    with pytest.raises(squad.SquadDataError, match=r"question x7 answer 0: answer_start=3"):
        squad.read_squad_json(str(bad))
    del doc["data"][0]["paragraphs"][0]["qas"][0]["question"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(squad.SquadDataError, match=r"question x7: missing field 'question'"):
        squad.read_squad_json(str(bad))


def test_windows_cover_the_context_and_map_answers_back(minilm_dir, shared_data):
    tok = _tokenizer(minilm_dir)
    examples, version = squad.read_squad_json(
        str(shared_data / "squad/v1.1/train-v1.1.first11articles.json")
    )
    assert version == "1.1" and len(examples) == 3807
    examples = examples[:300]
    feats, stats = squad.featurize(
        examples, tok, max_seq_length=96, doc_stride=32, max_query_length=24, training=True
    )
    assert stats.windows > 2 * len(examples)  # long contexts need several windows
    # every context token is "max context" in exactly one window of its question
    ctx_tokens = sum(len(ids) for ids in tok.encode_batch([e.context for e in examples]))
    assert int(feats["max_context"].sum()) == ctx_tokens
    # a labelled window's span is exactly the answer's characters (up to word-piece edges)
    hits = 0
    for row in np.nonzero(feats["start_positions"] > 0)[0]:
        ex = examples[feats["example_index"][row]]
        s, e = feats["start_positions"][row], feats["end_positions"][row]
        text = ex.context[feats["offsets"][row, s, 0] : feats["offsets"][row, e, 1]]
        hits += text == ex.answers[0][0]
        assert ex.answers[0][0] in ex.context[max(0, feats["offsets"][row, s, 0] - 1) :]
    assert hits >= 0.95 * len(np.nonzero(feats["start_positions"] > 0)[0])
    # the windows of a question start doc_stride tokens apart
    assert squad.window_starts(100, 40, 32) == [0, 32, 64]
    assert squad.window_starts(0, 40, 32) == [0]


def test_postprocess_picks_the_best_span_across_windows(minilm_dir):
    tok = _tokenizer(minilm_dir)
    ex = squad.QAExample("a", "who?", "one two three four five six seven eight nine ten")
    feats, _ = squad.featurize(
        [ex], tok, max_seq_length=10, doc_stride=3, max_query_length=4, training=False
    )
    n, t = feats["input_ids"].shape
    assert n > 1
    start, end = np.zeros((n, t)), np.zeros((n, t))
    # "seven eight" gets the best score in the window where "seven" has most context
    target = [r for r in range(n) if "seven" in ex.context[
        feats["offsets"][r][feats["max_context"][r]][:, 0].min():]]  # fmt: skip
    for r in range(n):
        for j in range(t):
            o = feats["offsets"][r, j]
            if o[0] >= 0 and ex.context[o[0] : o[1]] == "seven" and feats["max_context"][r, j]:
                start[r, j] = 5.0
            if o[0] >= 0 and ex.context[o[0] : o[1]] == "eight":
                end[r, j] = 5.0
    assert target
    (answer,) = qa_inference.postprocess([ex], feats, start, end, n_best_size=5)
    assert answer["text"] == "seven eight"
    assert ex.context[answer["start"] : answer["end"]] == "seven eight"
    # v2.0: a strong [CLS] score makes it "no answer"
    start[:, 0] = end[:, 0] = 20.0
    (answer,) = qa_inference.postprocess([ex], feats, start, end, version_2=True)
    assert answer["text"] == "" and answer["null_score_diff"] > 0


@pytest.mark.slow  # ~2 min on the shared 2-core machine (compiles train, eval and predict)
def test_squad_config_trains_evaluates_and_predicts(tmp_path, minilm_dir):
    """A tiny run: windows, eval with the official metrics, the predictions file, run.json,
    and bertjax.predict answering the dev questions exactly as the evaluation did."""
    from absl import flags

    from bertjax import config_lib, predict, train

    rng = random.Random(0)
    dev = _synthetic(tmp_path / "dev.json", 12, rng)
    config = config_lib.load(
        str(REPO / "configs" / "squad.py"),
        {
            "model.preset": "tiny",
            "data.vocab_file": str(minilm_dir / "vocab.txt"),
            "data.train_file": _synthetic(tmp_path / "train.json", 40, rng),
            "data.validation_file": dev,
            "data.max_seq_length": 32,
            "data.doc_stride": 12,
            "data.max_query_length": 12,
            "batch_size": 16,
            "num_train_epochs": 1.0,
            "optim.learning_rate": 1e-3,
        },
    )
    workdir = tmp_path / "run"
    train.run(config, workdir)
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/f1" in r]
    assert evals and 0.0 <= evals[-1]["eval/exact_match"] <= evals[-1]["eval/f1"] <= 100.0
    preds = json.loads((workdir / "predictions_eval.json").read_text())
    assert set(preds) == {f"q{i}" for i in range(12)}
    gold = {e.qid: [t for t, _ in e.answers] for e in squad.read_squad_json(dev)[0]}
    from bertjax import squad_metrics

    assert squad_metrics.evaluate_v1(gold, preds)["f1"] == pytest.approx(evals[-1]["eval/f1"])
    manifest = json.loads((workdir / "run.json").read_text())
    assert manifest["task"] == "squad" and manifest["data"]["doc_stride"] == 12

    qs = tmp_path / "qs.jsonl"
    examples, _ = squad.read_squad_json(dev)
    qs.write_text("".join(
        json.dumps({"id": e.qid, "question": e.question, "context": e.context}) + "\n"
        for e in examples
    ))  # fmt: skip
    out = tmp_path / "answers.jsonl"
    flags.FLAGS.unparse_flags()
    predict._define_flags()
    flags.FLAGS(["predict", f"--workdir={workdir}", f"--input={qs}", f"--output={out}"])
    predict.main(["predict"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.qid for e in examples]
    for row, e in zip(rows, examples, strict=True):
        assert row["answer"] == preds[e.qid]  # the run has one checkpoint: the evaluated one
        if row["start"] >= 0:
            assert e.context[row["start"] : row["end"]] == row["answer"]


def test_sweep_launcher_runs_squad_and_ner_and_selects_on_f1(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "launch"))
    import glue_sweep

    runs = glue_sweep.plan(["squad", "ner"], tmp_path, [0, 1], [5e-5, 3e-5], [32], [2])
    assert len(runs) == 8
    cmd = glue_sweep.command(runs[0], "/ckpt", ["--config.data.train_file=t.json"])
    assert f"--config={REPO / 'configs' / 'squad.py'}" in cmd
    for run in runs:  # fake finished runs: lr 3e-5 is the better setting
        run.workdir.mkdir(parents=True)
        f1 = 80.0 + (5 if run.learning_rate == 3e-5 else 0) + run.seed
        record = {"step": 10, "eval/f1": f1, "eval/exact_match": f1 - 8}
        (run.workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (run.workdir / glue_sweep.DONE_FILE).write_text("")
    tasks, rows = glue_sweep.summarise(runs)
    assert [(t["task"], t["learning_rate"], t["median"]) for t in tasks] == [
        ("squad", 3e-5, 85.5),
        ("ner", 3e-5, 85.5),
    ]
    assert len(rows) == 8


def test_tfds_squad_rows_read_and_checked(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    rows = [
        {"id": b"a1", "title": b"T", "context": b"Paris is big.", "question": b"What is big?",
         "answers": {"text": np.array([b"Paris"]), "answer_start": np.array([0])}},
        {"id": b"a2", "title": b"T", "context": b"Rome is old.", "question": b"What is old?",
         "answers": {"text": np.array([b"Rome"]), "answer_start": np.array([2])}},
    ]  # fmt: skip
    monkeypatch.setattr(tfds, "data_source", lambda name, **kw: rows[:1])
    examples, version = squad.load_tfds("squad/v1.1", "train")
    assert version == "1.1" and examples[0].answers == (("Paris", 0),)
    assert examples[0].qid == "a1" and examples[0].question == "What is big?"
    monkeypatch.setattr(tfds, "data_source", lambda name, **kw: rows)
    with pytest.raises(squad.SquadDataError, match=r"tfds squad/v1.1 train: question a2 answer 0"):
        squad.load_tfds("squad/v1.1", "train")


def test_v2_files_read_unanswerable_questions_and_train_on_cls(minilm_dir, tmp_path):
    doc = {"version": "v2.0", "data": [{"paragraphs": [{"context": "Paris is big.", "qas": [
        {"id": "h", "question": "What is big?", "answers": [{"text": "Paris", "answer_start": 0}],
         "is_impossible": False},
        {"id": "n", "question": "What is small?", "answers": [], "is_impossible": True},
    ]}]}]}  # fmt: skip
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(doc))
    examples, version = squad.read_squad_json(str(path))
    assert version == "2.0" and examples[1].is_impossible and examples[1].answers == ()
    feats, stats = squad.featurize(
        examples, _tokenizer(minilm_dir), max_seq_length=24, doc_stride=8, max_query_length=8,
        training=True,
    )  # fmt: skip
    # [CLS] what is big ? [SEP] paris: the answer at 6; the unanswerable question on [CLS]
    assert list(feats["start_positions"]) == [6, 0] and stats.answer_outside_windows == 0
    doc["data"][0]["paragraphs"][0]["qas"][1]["is_impossible"] = False
    path.write_text(json.dumps(doc))
    with pytest.raises(squad.SquadDataError, match="question n: no answers and not is_impossible"):
        squad.read_squad_json(str(path))


def test_best_metric_of_squad_and_ner_configs():
    from bertjax import config_lib
    from bertjax.tasks import ner as ner_task
    from bertjax.tasks import squad as squad_task

    for task, config_file in ((squad_task, "configs/squad.py"), (ner_task, "configs/ner.py")):
        config = config_lib.load(REPO / config_file)
        assert task.best_metric(config) is None  # no validation set: the last params are kept
        config = config_lib.load(REPO / config_file, {"data.validation_file": "dev"})
        assert task.best_metric(config) == ("eval/f1", "max")
        config = config_lib.load(
            REPO / config_file, {"data.validation_file": "dev", "best_metric": "eval/loss"}
        )
        assert task.best_metric(config) == ("eval/loss", "min")
    # SQuAD from TFDS: a validation split is an eval set; an empty one is none.
    config = config_lib.load(REPO / "configs/squad.py", {"data.tfds_name": "squad/v1.1"})
    assert squad_task.best_metric(config) == ("eval/f1", "max")
    config = config_lib.load(
        REPO / "configs/squad.py", {"data.tfds_name": "squad/v1.1", "data.validation_split": ""}
    )
    assert squad_task.best_metric(config) is None
