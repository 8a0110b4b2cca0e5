"""QA (answer span) and NER (a word's tag) targets: the heads continue from given embeddings,
IG completeness, gradient x input against finite differences, the span / word selection and its
errors, and the CLI on squad and ner run directories."""

from __future__ import annotations

import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from explain_runs import NER_TAGS, minilm_span_run, tiny_span_run, write_run_dir

from bertjax.explain import explainer, ner_target, precision, qa_target, targets

QUESTION = "Who owns the red car?"
CONTEXT = "The red car's owner is Alice. The day was long and quiet in town."
TEXT = "Carol Smith went to Oslo with Bob."
# IG's completeness |delta| <= rel |F(x) - F(x')| + abs, 64 Gauss-Legendre steps: measured on
# these inputs 4e-10 (float64) and 3e-7 (float32) of |F(x) - F(x')|; the bounds leave 100x.
BOUNDS = {"float64": (1e-6, 1e-9), "float32": (1e-4, 1e-5)}


@contextlib.contextmanager
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def tiny_qa(minilm_dir):
    return tiny_span_run(minilm_dir, "squad")


@pytest.fixture(scope="module")
def tiny_ner(minilm_dir):
    return tiny_span_run(minilm_dir, "ner")


def _assert_complete(out):
    c = out["completeness"]
    gap = abs(c["f_input"] - c["f_baseline"])
    assert gap > 1e-3, c  # a target the input actually moves
    rel, atol = BOUNDS[out["method"]["precision"]]
    assert abs(c["delta"]) <= rel * gap + atol, c
    assert sum(out["attributions"]["raw"]) == pytest.approx(gap * np.sign(
        c["f_input"] - c["f_baseline"]) + c["delta"])  # fmt: skip


def test_span_and_token_heads_continue_from_given_embeddings(tiny_qa, tiny_ner):
    for run, keys in ((tiny_qa, ("start_logits", "end_logits")), (tiny_ner, ("logits",))):
        chosen = (qa_target.select(run, QUESTION, CONTEXT) if run is tiny_qa
                  else ner_target.select(run, TEXT))  # fmt: skip
        variables = {"params": run.params}
        plain = run.module.apply(variables, chosen.batch)
        e = run.module.apply(variables, chosen.batch, method="embed")
        same = run.module.apply(variables, chosen.batch, embeddings=e)
        other = run.module.apply(variables, chosen.batch, embeddings=0.5 * e)
        for key in keys:
            np.testing.assert_array_equal(np.asarray(plain[key]), np.asarray(same[key]))
            assert not np.allclose(np.asarray(plain[key]), np.asarray(other[key]))


@pytest.mark.parametrize("task", ["squad", "ner"])
def test_integrated_gradients_completeness_minilm(minilm_dir, task):
    """IG completeness (BOUNDS) with MiniLM and a fresh head, in float64 and in float32."""
    run = minilm_span_run(minilm_dir, task)
    args = (QUESTION, CONTEXT) if task == "squad" else (TEXT,)
    with x64():
        out64 = explainer.explain(run, *args, steps=64, dtype="float64", with_attention=False)
    _assert_complete(out64)
    out32 = explainer.explain(run, *args, steps=64, with_attention=False)
    _assert_complete(out32)
    assert out32["target"] == {**out64["target"], "value": out32["target"]["value"]}
    assert out32["target"]["value"] == pytest.approx(out64["target"]["value"], abs=1e-4)


def _finite_differences(run, chosen, score_fn, eps=1e-5):
    """d F / d (scale of token t's embedding) at 1, central differences in float64: gradient x
    input of token t without autodiff."""
    module = explainer._module(run.model_config)
    params = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), run.params)
    batch = {k: jnp.asarray(v) for k, v in chosen.batch.items()}
    x = np.asarray(precision.in_float64(lambda p, b: targets.embed(module, p, b))(params, batch))[0]
    rows = []
    for t in range(chosen.length):
        for sign in (1.0, -1.0):
            row = x.copy()
            row[t] *= 1.0 + sign * eps
            rows.append(row)
    scores = precision.in_float64(score_fn)(jnp.asarray(np.stack(rows)),
                                            (params, batch, *chosen.extra))  # fmt: skip
    scores = np.asarray(scores).reshape(-1, 2)
    return (scores[:, 0] - scores[:, 1]) / (2 * eps)


def test_grad_x_input_equals_finite_differences(tiny_qa, tiny_ner):
    module = explainer._module(tiny_qa.model_config)
    with x64():
        out = explainer.explain(tiny_qa, QUESTION, CONTEXT, method="grad_x_input",
                                dtype="float64", with_attention=False)  # fmt: skip
        chosen = qa_target.select(tiny_qa, QUESTION, CONTEXT)
        want = _finite_differences(tiny_qa, chosen, targets.span_score(module, "span"))
        np.testing.assert_allclose(out["attributions"]["raw"], want, atol=1e-7, rtol=1e-5)
        out = explainer.explain(tiny_ner, TEXT, method="grad_x_input", score="log_probability",
                                dtype="float64", with_attention=False)  # fmt: skip
        chosen = ner_target.select(tiny_ner, TEXT)
        module = explainer._module(tiny_ner.model_config)
        want = _finite_differences(tiny_ner, chosen, targets.tag_score(module, "log_probability"))
        np.testing.assert_allclose(out["attributions"]["raw"], want, atol=1e-7, rtol=1e-5)


def test_qa_score_is_start_plus_end_logit_of_the_predicted_span(tiny_qa):
    from bertjax.inference import qa as qa_inference

    kw = {"method": "grad_x_input", "with_attention": False}
    out = {s: explainer.explain(tiny_qa, QUESTION, CONTEXT, qa_score=s, **kw)
           for s in ("span", "start", "end")}  # fmt: skip
    t, p = out["span"]["target"], out["span"]["prediction"]
    assert (t["kind"], t["text"], t["start"], t["end"]) == ("answer_span", p["text"], p["start"],
                                                             p["end"])  # fmt: skip
    assert CONTEXT[t["start"] : t["end"]] == t["text"] and t["score"] == "start_logit + end_logit"
    assert out["span"]["inputs"] == {"question": QUESTION, "context": CONTEXT}
    starts, ends = qa_inference.forward(
        tiny_qa.module, tiny_qa.params, qa_target.select(tiny_qa, QUESTION, CONTEXT).batch
    )
    start, end = float(starts[0, t["token_start"]]), float(ends[0, t["token_end"]])
    assert t["value"] == pytest.approx(start + end, abs=1e-5) == p["score"]
    assert out["start"]["target"]["value"] == pytest.approx(start, abs=1e-5)
    assert out["end"]["target"]["value"] == pytest.approx(end, abs=1e-5)
    # gradient x input is linear in the score: span = start + end, token by token
    np.testing.assert_allclose(
        out["span"]["attributions"]["raw"],
        np.add(out["start"]["attributions"]["raw"], out["end"]["attributions"]["raw"]),
        atol=1e-5,
    )


def test_qa_span_by_characters_tokens_and_window(tiny_qa):
    kw = {"method": "grad_norm", "with_attention": False}
    alice = CONTEXT.index("Alice")
    out = explainer.explain(tiny_qa, QUESTION, CONTEXT, answer=(alice, alice + 5), **kw)
    t = out["target"]
    assert (t["text"], t["start"], t["end"]) == ("Alice", alice, alice + 5)
    assert out["tokens"][t["token_start"] : t["token_end"] + 1] == ["alice"]
    # characters inside a token snap outwards to whole tokens, as training labels answers
    snapped = explainer.explain(tiny_qa, QUESTION, CONTEXT, answer=(alice + 1, alice + 3), **kw)
    assert snapped["target"]["text"] == "Alice"
    span = (t["token_start"], t["token_end"])
    by_tokens = explainer.explain(tiny_qa, QUESTION, CONTEXT, answer_tokens=span, **kw)
    assert by_tokens["target"] == t
    with pytest.raises(ValueError, match=r"--answer_start=5 --answer_end=500: need 0 <= start "
                       rf"< end <= {len(CONTEXT)}"):  # fmt: skip
        explainer.explain(tiny_qa, QUESTION, CONTEXT, answer=(5, 500), **kw)
    first = out["tokens"].index("[SEP]") + 1
    with pytest.raises(ValueError, match=rf"--answer_tokens=0,3: the context's tokens are "
                       rf"positions {first}-{len(out['tokens']) - 2} "):  # fmt: skip
        explainer.explain(tiny_qa, QUESTION, CONTEXT, answer_tokens=(0, 3), **kw)
    with pytest.raises(ValueError, match="word is for NER"):
        explainer.explain(tiny_qa, QUESTION, CONTEXT, word=1, **kw)
    with pytest.raises(ValueError, match=r"a QA run explains a question \(text\) about a context"):
        explainer.explain(tiny_qa, QUESTION, **kw)


def test_qa_long_context_reads_the_window_holding_the_span(tiny_qa):
    """max_seq_length 48: the context takes several windows; the explanation reads the one
    postprocessing took the span from, and a span no window holds is an error."""
    filler = " The day was long and quiet in town." * 6
    context = filler + " The red car's owner is Alice." + filler
    kw = {"method": "grad_norm", "with_attention": False}
    alice = context.index("Alice")
    out = explainer.explain(tiny_qa, QUESTION, context, answer=(alice, alice + 5), **kw)
    t = out["target"]
    assert t["windows"] > 2 and 0 < t["window"] < t["windows"] - 1
    assert out["tokens"][t["token_start"]] == "alice" and len(out["tokens"]) <= 48
    default = explainer.explain(tiny_qa, QUESTION, context, **kw)
    assert (
        context[default["target"]["start"] : default["target"]["end"]]
        == (default["prediction"]["text"])
    )
    with pytest.raises(ValueError, match=r"is not inside one window of the context: a window "
                       r"holds max_seq_length=48 tokens"):  # fmt: skip
        explainer.explain(tiny_qa, QUESTION, context, answer=(0, len(context)), **kw)
    with pytest.raises(ValueError, match=r"--answer_tokens: the context takes \d+ windows"):
        explainer.explain(tiny_qa, QUESTION, context, answer_tokens=(10, 11), **kw)


def test_ner_word_and_tag(tiny_ner):
    from bertjax.inference import ner as ner_inference

    kw = {"method": "grad_norm", "with_attention": False}
    out = explainer.explain(tiny_ner, TEXT, **kw)
    t, entities = out["target"], out["prediction"]["entities"]
    if entities:  # the default: the first predicted entity's first word, its predicted tag
        assert t["word_from"] == "first predicted entity"
        assert t["word_index"] == entities[0]["first_word"]
    else:
        assert (t["word_from"], t["word_index"]) == ("no entity predicted: the first word", 0)
    assert t["tag"] == out["prediction"]["words"][t["word_index"]]["tag"]
    assert out["inputs"] == {"text": TEXT, "word": None}

    out = explainer.explain(tiny_ner, TEXT, word=4, target="B-LOC", score="probability", **kw)
    t = out["target"]
    assert (t["word"], t["tag"], t["tag_index"], t["word_from"]) == ("Oslo", "B-LOC", 1, "given")
    assert TEXT[t["start"] : t["end"]] == "Oslo" and out["tokens"][t["position"]] == "oslo"
    probs = ner_inference.word_probabilities(
        tiny_ner, [[w for w, _, _ in ner_inference.split_words(TEXT)]]
    )[0]
    assert t["value"] == pytest.approx(probs[4, 1], abs=1e-5)

    # a word of several pieces: its first piece carries the score, as training labels it
    out = explainer.explain(tiny_ner, "Ouagadougou is far", word=0, **kw)
    pieces = tiny_ner.tokenizer.encode("Ouagadougou")
    assert len(pieces) > 1 and out["target"]["position"] == 1
    assert out["token_ids"][1 : 1 + len(pieces)] == list(pieces)


def test_ner_errors_name_the_flag_and_the_valid_values(tiny_ner):
    with pytest.raises(ValueError, match=r"--word=9 is out of range: the text has 8 words \(0-7"):
        explainer.explain(tiny_ner, TEXT, word=9, method="grad_norm")
    with pytest.raises(ValueError, match=r"--word=-1 is out of range"):
        explainer.explain(tiny_ner, TEXT, word=-1, method="grad_norm")
    with pytest.raises(ValueError, match=rf"--target='B-ORG' is not one of the run's tags "
                       rf"{NER_TAGS!r}".replace("[", r"\[").replace("]", r"\]")):  # fmt: skip
        explainer.explain(tiny_ner, TEXT, word=0, target="B-ORG", method="grad_norm")
    with pytest.raises(ValueError, match="unknown score 'odds'"):
        explainer.explain(tiny_ner, TEXT, score="odds", method="grad_norm")
    with pytest.raises(ValueError, match="answer / answer_tokens are for QA"):
        explainer.explain(tiny_ner, TEXT, answer=(0, 3), method="grad_norm")


def test_cli_on_squad_and_ner_runs(tiny_qa, tiny_ner, tmp_path, capsys):
    from bertjax.explain import __main__ as cli

    qa_dir = write_run_dir(tmp_path / "squad", tiny_qa, "squad")
    ner_dir = write_run_dir(tmp_path / "ner", tiny_ner, "ner")
    alice = CONTEXT.index("Alice")
    out = tmp_path / "qa"
    code = cli.main([f"--workdir={qa_dir}", f"--question={QUESTION}", f"--context={CONTEXT}",
                     f"--answer_start={alice}", f"--answer_end={alice + 5}", "--steps=16",
                     f"--output={out}.json,{out}.html,{out}.png"])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "qa.json").read_text())
    assert result["target"]["text"] == "Alice" and result["task"] == "squad"
    assert "answer span 'Alice'" in capsys.readouterr().out
    html = (tmp_path / "qa.html").read_text()
    assert "http://" not in html and "https://" not in html and QUESTION[:20] in html
    assert (tmp_path / "qa.png").read_bytes()[:4] == b"\x89PNG"

    code = cli.main(
        [
            f"--workdir={ner_dir}",
            f"--text={TEXT}",
            "--word=4",
            "--target=B-LOC",
            "--method=grad_x_input",
            f"--output={tmp_path}/ner.json,{tmp_path}/ner.png",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "ner.json").read_text())
    assert (result["target"]["word"], result["target"]["tag"]) == ("Oslo", "B-LOC")
    assert "tag 'B-LOC' of word 4 'Oslo'" in capsys.readouterr().out

    code = cli.main([f"--workdir={ner_dir}", f"--text={TEXT}", "--word=12",
                     f"--output={tmp_path}/x.json"])  # fmt: skip
    assert code == 2 and "--word=12 is out of range" in capsys.readouterr().err
    code = cli.main([f"--workdir={qa_dir}", f"--text={TEXT}", f"--output={tmp_path}/x.json"])
    assert code == 2 and "give --question and --context" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([f"--workdir={qa_dir}", f"--question={QUESTION}", f"--output={tmp_path}/x.json"])
