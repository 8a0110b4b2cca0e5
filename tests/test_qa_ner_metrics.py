"""SQuAD metrics against the official scripts' logic, entity metrics against seqeval."""

import random

import pytest
import seqeval.metrics
import seqeval.scheme  # noqa: F401  (the default mode is conlleval's; no scheme is passed)

from bertjax import ner_metrics, squad_metrics
from tests import squad_official

WORDS = ["the", "a", "An", "Denver", "Broncos", "1990", "Paris,", "(France)", "!", "...", "é", "x"]


def _dataset(golds):
    qas = [{"id": q, "answers": [{"text": t} for t in a]} for q, a in golds.items()]
    return [{"paragraphs": [{"qas": qas}]}]


def _random_text(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5)))


EDGE = {
    "empty_pred": (["Denver Broncos"], ""),
    "punct_only_pred": (["Denver Broncos"], "..."),
    "punct_only_gold": (["!"], "!"),  # both normalise to "": v1 EM 1 / F1 0, v2 F1 1
    "article_only": (["the"], "a"),
    "case_punct": (["Paris, (France)"], "paris france"),
    "partial": (["the Denver Broncos"], "Broncos 1990"),
    "two_golds": (["1990", "Denver"], "Denver!"),
    "repeat_tokens": (["x x y"], "x x x"),
}


def test_squad_v1_edge_cases_match_official():
    golds = {q: g for q, (g, _) in EDGE.items()}
    preds = {q: p for q, (_, p) in EDGE.items()}
    for q in golds:
        ours = squad_metrics.evaluate_v1({q: golds[q]}, {q: preds[q]})
        theirs = squad_official.v1_evaluate(_dataset({q: golds[q]}), {q: preds[q]})
        assert ours == pytest.approx(theirs), q
    # hand-checked values
    assert squad_metrics.evaluate_v1({"e": ["Denver Broncos"]}, {"e": ""})["f1"] == 0.0
    assert squad_metrics.evaluate_v1({"p": ["!"]}, {"p": "!"}) == {"exact_match": 100.0, "f1": 0.0}
    assert (
        squad_metrics.evaluate_v1({"c": ["Paris, (France)"]}, {"c": "paris france"})["exact_match"]
        == 100.0
    )
    # a missing prediction scores 0 but counts in the total
    assert squad_metrics.evaluate_v1({"a": ["x"], "b": ["y"]}, {"a": "x"})["exact_match"] == 50.0


def test_squad_v1_random_match_official():
    rng = random.Random(0)
    golds = {
        f"q{i}": [_random_text(rng) or "x" for _ in range(rng.randint(1, 3))] for i in range(300)
    }
    preds = {q: _random_text(rng) for q in golds if rng.random() > 0.05}
    ours = squad_metrics.evaluate_v1(golds, preds)
    theirs = squad_official.v1_evaluate(_dataset(golds), preds)
    assert ours == pytest.approx(theirs)
    assert 0 < ours["f1"] < 100


def test_squad_v2_random_and_edges_match_official():
    rng = random.Random(1)
    golds = {}
    for i in range(300):
        golds[f"q{i}"] = [] if rng.random() < 0.4 else [_random_text(rng) for _ in range(2)]
    golds.update({q: g for q, (g, _) in EDGE.items()})
    preds = {q: ("" if rng.random() < 0.3 else _random_text(rng)) for q in golds}
    preds.update({q: p for q, (_, p) in EDGE.items()})
    na = {q: rng.uniform(-5, 5) for q in golds}
    assert squad_metrics.evaluate_v2(golds, preds) == pytest.approx(
        squad_official.v2_evaluate(_dataset(golds), preds)
    )
    for thresh in (1.0, 0.0, -2.5):
        ours = squad_metrics.evaluate_v2(golds, preds, na, thresh)
        theirs = squad_official.v2_evaluate(_dataset(golds), preds, na, thresh)
        assert ours == pytest.approx(theirs)
    assert {"HasAns_f1", "NoAns_exact", "best_f1", "best_f1_thresh"} <= set(ours)


def _seqeval(gold, pred):
    report = seqeval.metrics.classification_report(gold, pred, output_dict=True, zero_division=0)
    out = {
        "overall": {
            "precision": seqeval.metrics.precision_score(gold, pred, zero_division=0),
            "recall": seqeval.metrics.recall_score(gold, pred, zero_division=0),
            "f1": seqeval.metrics.f1_score(gold, pred, zero_division=0),
        }
    }
    for kind, row in report.items():
        if kind.endswith(" avg"):
            continue
        out[kind] = {k: row[k] for k in ("precision", "recall", "f1-score")}
        out[kind]["f1"] = out[kind].pop("f1-score")
    return out


def _compare(gold, pred):
    ours = ner_metrics.evaluate(gold, pred)
    theirs = _seqeval(gold, pred)
    for kind, row in theirs.items():
        for key, value in row.items():
            assert ours[kind][key] == pytest.approx(value), (kind, key, gold, pred)
    assert set(ours) == set(theirs) | {"overall"}
    return ours


def test_ner_hand_made_cases_match_seqeval():
    cases = [
        # entity at sentence end
        ([["O", "B-PER", "I-PER"]], [["O", "B-PER", "I-PER"]]),
        # I- after O starts an entity (IOB1 reading) in gold and prediction
        ([["O", "I-LOC", "I-LOC", "O"]], [["O", "B-LOC", "I-LOC", "O"]]),
        ([["O", "B-LOC", "O"]], [["O", "I-LOC", "O"]]),
        # type change inside a run, adjacent entities, IOBES tags
        ([["B-PER", "I-ORG", "B-ORG", "I-ORG"]], [["B-PER", "B-ORG", "I-ORG", "I-ORG"]]),
        ([["S-PER", "B-LOC", "E-LOC", "O"]], [["S-PER", "B-LOC", "I-LOC", "E-LOC"]]),
        # empty prediction, and entities over two sentences
        ([["B-MISC"], ["I-MISC", "O"]], [["O"], ["O", "O"]]),
        ([["B-MISC"], ["I-MISC", "O"]], [["B-MISC"], ["B-MISC", "O"]]),
    ]
    for gold, pred in cases:
        _compare(gold, pred)
    ours = _compare([["O", "B-PER", "I-PER"]], [["O", "B-PER", "O"]])
    assert ours["overall"]["f1"] == 0.0 and ours["PER"]["support"] == 1
    assert ner_metrics.get_entities(["O", "I-LOC", "I-LOC"]) == [("LOC", 1, 2)]


def test_ner_random_sequences_match_seqeval():
    rng = random.Random(2)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "E-ORG", "S-MISC"]
    for _ in range(200):
        gold, pred = [], []
        for _ in range(rng.randint(1, 4)):
            n = rng.randint(1, 8)
            gold.append([rng.choice(tags) for _ in range(n)])
            pred.append([rng.choice(tags) for _ in range(n)])
        _compare(gold, pred)


def test_ner_length_mismatch_names_the_sentence():
    with pytest.raises(ValueError, match="sentence 1"):
        ner_metrics.evaluate([["O"], ["O", "O"]], [["O"], ["O"]])
