"""Question-answering and token-classification heads: logit parity with transformers' PyTorch
BertForQuestionAnswering / BertForTokenClassification, both conversion directions."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bertjax import models
from bertjax.convert import from_hf, to_hf
from tests.test_convert import (
    TOL,
    bertjax_outputs,
    hf_model,
    make_batch,
    max_diff,
    noisy_params,
    torch_outputs,
)

transformers = pytest.importorskip("transformers")


def _diffs(head, out, ref):
    if head == "question_answering":
        return {
            "start_logits": max_diff(out["start_logits"], ref.start_logits),
            "end_logits": max_diff(out["end_logits"], ref.end_logits),
        }
    return {"logits": max_diff(out["logits"], ref.logits)}


@pytest.mark.parametrize(
    "cls_name, head, extra",
    [
        ("BertForQuestionAnswering", "question_answering", {}),
        ("BertForTokenClassification", "token_classification", {"num_labels": 9}),
    ],
)
def test_from_hf_parity(tmp_path, cls_name, head, extra):
    hf, directory = hf_model(cls_name, tmp_path, **extra)
    cfg, params = from_hf(directory)
    assert cfg.head == head and "pooler" not in params
    batch = make_batch()
    diffs = _diffs(head, bertjax_outputs(cfg, params, batch), torch_outputs(hf, batch))
    print(f"{cls_name} from_hf parity: {diffs}")
    assert max(diffs.values()) < TOL
    # The backbone of such a checkpoint fine-tunes too (head="encoder" drops the head).
    enc_cfg, enc = from_hf(directory, head="encoder")
    assert enc_cfg.head == "encoder" and "qa_outputs" not in enc and "classifier" not in enc


@pytest.mark.parametrize(
    "head, cls_name, num_labels",
    [
        ("question_answering", "BertForQuestionAnswering", 2),
        ("token_classification", "BertForTokenClassification", 5),
    ],
)
def test_to_hf_round_trip(tmp_path, head, cls_name, num_labels):
    cfg = models.ModelConfig(
        vocab_size=99,
        hidden_size=96,
        num_layers=2,
        num_heads=3,
        intermediate_size=200,
        max_position_embeddings=32,
        head=head,
        num_labels=num_labels,
    )
    params = noisy_params(cfg)
    assert "pooler" not in params  # as HF's models: built without the pooler
    to_hf(cfg, params, tmp_path / "out")
    hf, info = getattr(transformers, cls_name).from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert {k: list(v) for k, v in info.items() if len(v)} == {}, info
    hf.eval()
    batch = make_batch()
    out = bertjax_outputs(cfg, params, batch)
    diffs = _diffs(head, out, torch_outputs(hf, batch))
    print(f"to_hf {cls_name} parity: {diffs}")
    assert max(diffs.values()) < TOL
    if head == "token_classification":
        assert out["logits"].shape == (3, 12, num_labels)

    cfg2, params2 = from_hf(tmp_path / "out")
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
