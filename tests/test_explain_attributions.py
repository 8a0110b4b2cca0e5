"""Attributions: quadrature, float64 evaluation, completeness, and parity with captum."""

from __future__ import annotations

import contextlib
import csv

import jax
import numpy as np
import pytest
from explain_runs import minilm_classifier, tiny_run

from bertjax.explain import attributions, explainer, precision


@contextlib.contextmanager
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def sst2_dev(shared_data, n):
    with open(shared_data / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows[:n]]


@pytest.mark.parametrize("rule", attributions.RULES)
def test_quadrature_integrates_polynomials(rule):
    alphas, weights = attributions.quadrature(rule, 8)
    assert weights.sum() == pytest.approx(1.0)
    assert (alphas >= 0).all() and (alphas <= 1).all()
    # Gauss-Legendre with 8 points is exact up to degree 15; the trapezoid rule for lines.
    degree = 15 if rule == "gauss_legendre" else 1
    assert np.dot(weights, alphas**degree) == pytest.approx(1 / (degree + 1), rel=1e-12)
    with pytest.raises(ValueError, match="unknown integration rule"):
        attributions.quadrature("simpson", 8)


def test_in_float64_promotes_float32_internals():
    import jax.numpy as jnp

    def f(x):  # float32 casts inside, as the models' LayerNorm and logits
        # (constants made at trace time keep their float32 rounding: these are exact)
        y = jnp.tanh(x.astype(jnp.float32)) @ jnp.array([0.5, 0.25, 0.25], jnp.float32)
        return jax.nn.relu(y).astype(jnp.float32)

    x = np.array([0.1, 0.2, 0.3000001])
    with x64():
        exact = np.tanh(x) @ np.array([0.5, 0.25, 0.25])
        assert abs(float(f(x)) - exact) > 1e-10  # float32 rounding
        y = precision.in_float64(f)(x)
        assert y.dtype == np.float64 and float(y) == pytest.approx(exact, abs=1e-15)
        g = jax.jit(jax.grad(precision.in_float64(f)))(x)
        np.testing.assert_allclose(g, (1 - np.tanh(x) ** 2) * [0.5, 0.25, 0.25], rtol=1e-13)


def test_completeness_float64_minilm(minilm_dir, shared_data):
    """|delta| <= 0.01 |F(x) - F(x')| + 1e-4 in float64, 64 Gauss-Legendre steps (MiniLM with a
    fresh head; the fine-tuned 50-sentence check is benchmarks/explain_checks.py)."""
    run = minilm_classifier(minilm_dir)
    with x64():
        for text in sst2_dev(shared_data, 3):
            out = explainer.explain(run, text, steps=64, dtype="float64", with_attention=False)
            c = out["completeness"]
            gap = abs(c["f_input"] - c["f_baseline"])
            assert abs(c["delta"]) <= 0.01 * gap + 1e-4, (text, c)
            assert sum(out["attributions"]["raw"]) == pytest.approx(
                c["f_input"] - c["f_baseline"] + c["delta"]
            )


def test_mlm_target_and_top_k(minilm_dir):
    run = tiny_run(minilm_dir, "mlm")
    with x64():
        out = explainer.explain(run, "the cat sat on the [MASK] .", steps=32, dtype="float64")
    position = out["tokens"].index("[MASK]")
    assert out["target"]["kind"] == "masked_token" and out["target"]["position"] == position
    top = out["mlm_predictions"][0]["top_k"]
    assert out["mlm_predictions"][0]["position"] == position and len(top) == 5
    assert top[0]["id"] == out["target"]["token_id"]
    assert out["target"]["value"] == pytest.approx(np.log(top[0]["probability"]), abs=1e-5)
    c = out["completeness"]
    assert abs(c["delta"]) <= 0.01 * abs(c["f_input"] - c["f_baseline"]) + 1e-4
    with pytest.raises(ValueError, match=r"put \[MASK\] in the text"):
        explainer.explain(run, "no mask here", method="grad_norm")


def test_bad_arguments_name_the_value(minilm_dir):
    run = minilm_classifier(minilm_dir)
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        explainer.explain(run, "good", method="lime")
    with pytest.raises(ValueError, match=r"'neutral' is not one of the run's labels"):
        explainer.explain(run, "good", target="neutral", method="grad_norm")


@pytest.fixture(scope="module")
def hf_pair(minilm_dir, tmp_path_factory):
    """The same classifier in bertjax and in transformers (through convert.to_hf)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from bertjax import convert

    run = minilm_classifier(minilm_dir)
    out = tmp_path_factory.mktemp("hf_cls")
    convert.to_hf(run.model_config, run.params, out)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, attn_implementation="eager"
    ).eval()
    return run, model, torch


def test_parity_with_captum(hf_pair, shared_data):
    """Same baseline ([CLS] [PAD]... [SEP]), steps and rule: IG per-token Pearson >= 0.99 and
    grad x input within 1e-4 (captum's layer methods on BERT's embedding output)."""
    captum_attr = pytest.importorskip("captum.attr")
    run, model, torch = hf_pair
    tok = run.tokenizer

    def forward(input_ids, token_type_ids, attention_mask, target):
        logits = model(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        ).logits
        return logits[:, target]

    for text in sst2_dev(shared_data, 3):
        # Padded to one shape (one compilation; padding is masked), captum's input unpadded.
        kw = {"with_attention": False, "pad_to": 48}
        ours_ig = explainer.explain(run, text, steps=32, **kw)
        ours_gxi = explainer.explain(run, text, method="grad_x_input", **kw)
        target = ours_ig["target"]["index"]
        ids = torch.tensor([ours_ig["token_ids"]])
        special = torch.isin(ids, torch.tensor([tok.cls_id, tok.sep_id]))
        base = torch.where(special, ids, torch.full_like(ids, tok.pad_id))
        types, mask = torch.zeros_like(ids), torch.ones_like(ids)
        lig = captum_attr.LayerIntegratedGradients(forward, model.bert.embeddings)
        theirs, delta = lig.attribute(
            ids, baselines=base, additional_forward_args=(types, mask, target), n_steps=32,
            method="gausslegendre", return_convergence_delta=True,
        )  # fmt: skip
        theirs = theirs.sum(-1)[0].detach().numpy()
        ours = np.array(ours_ig["attributions"]["raw"])
        assert np.corrcoef(ours, theirs)[0, 1] >= 0.99, (text, ours, theirs)
        gxa = captum_attr.LayerGradientXActivation(forward, model.bert.embeddings)
        theirs = gxa.attribute(ids, additional_forward_args=(types, mask, target))
        theirs = theirs.sum(-1)[0].detach().numpy()
        np.testing.assert_allclose(ours_gxi["attributions"]["raw"], theirs, atol=1e-4)
