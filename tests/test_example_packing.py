"""Packed fine-tuning batches: layout, agreement between hosts, and that a packed step computes
what the padded one does (logits, loss and gradients of the same examples)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.core import meta

from bertjax import models, sharding
from bertjax.data import batching
from bertjax.data.example_packing import ExamplePacker, first_fit_decreasing
from bertjax.tasks import finetune
from bertjax.tasks.base import HostInfo

CLS, SEP = 101, 102


def _features(lengths: list[int], max_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Featurised rows as `bertjax.data.features` makes them: [CLS] a [SEP] (b [SEP]), padded."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    ids = np.zeros((n, max_len), np.int32)
    types = np.zeros((n, max_len), np.int32)
    mask = np.zeros((n, max_len), np.int32)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(1000, 2000, length)
        ids[i, 0], ids[i, length - 1] = CLS, SEP
        mask[i, :length] = 1
        if length >= 5 and i % 2:  # every other row a pair: segment B after the middle
            types[i, length // 2 : length] = 1
    labels = rng.integers(0, 3, n).astype(np.int32)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}


def test_first_fit_decreasing_places_longest_first():
    rows = first_fit_decreasing(np.array([3, 8, 4, 5, 2]), capacity=10)
    # 8 -> row 0; 5 -> row 1; 4 -> row 1 (9); 3 -> row 2; 2 -> row 0 (10).
    assert rows.tolist() == [2, 0, 1, 1, 0]


def test_packed_batch_lays_out_every_example_as_alone():
    feats = _features([5, 12, 3, 7, 16, 4, 9, 2], max_len=16)
    packer = ExamplePacker(feats, row_multiple=1)
    examples = np.array([4, 0, 2, -1, 6, 1, 7, 3])  # -1: the top-up of a last batch
    batch = packer.pack(examples, batching.BATCH_KEYS)
    real = examples >= 0
    assert batch["weights"].tolist() == real.astype(np.float32).tolist()
    assert batch["labels"].tolist() == np.where(real, feats["labels"][examples], 0).tolist()
    rows = batch["input_ids"].shape[0]
    assert rows == packer.rows_needed(examples) < len(examples)
    # 16+12+9+7+5+3+2 = 54 tokens in rows of 16: at least 4 rows; first-fit decreasing gives 4.
    assert rows == 4
    seen = np.zeros_like(batch["attention_mask"])
    for i, ex in enumerate(examples):
        if ex < 0:
            assert batch["cls_index"][i] == 0
            continue
        n = int(feats["attention_mask"][ex].sum())
        r, c = divmod(int(batch["cls_index"][i]), 16)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            np.testing.assert_array_equal(batch[key][r, c : c + n], feats[key][ex, :n])
        np.testing.assert_array_equal(batch["positions"][r, c : c + n], np.arange(n))
        segment = batch["segment_ids"][r, c]
        assert segment > 0 and (batch["segment_ids"][r, c : c + n] == segment).all()
        # Its segment id is its own in the row: no other example shares it.
        assert (batch["segment_ids"][r] == segment).sum() == n
        seen[r, c : c + n] += 1
    # Every token of a row belongs to exactly one example or is padding (mask 0, segment 0).
    np.testing.assert_array_equal(seen, batch["attention_mask"])
    assert (batch["segment_ids"][seen == 0] == 0).all()


def test_rows_round_up_to_the_row_multiple_and_cap_at_the_batch():
    feats = _features([3] * 8 + [16] * 8, max_len=16)
    packer = ExamplePacker(feats, row_multiple=4)
    assert packer.pack(np.arange(8), batching.BATCH_KEYS)["input_ids"].shape[0] == 4  # 2 -> 4
    long_rows = packer.pack(np.arange(8, 16), batching.BATCH_KEYS)
    assert long_rows["input_ids"].shape[0] == 8  # one per row; 8 is already a multiple
    odd = ExamplePacker(feats, row_multiple=4).pack(np.arange(10, 16), batching.BATCH_KEYS)
    assert odd["input_ids"].shape[0] == 6  # 6 long examples: capped at the batch, not 8


def test_hosts_agree_on_the_shape_and_index_global_rows():
    """Each host packs from the global batch: the same row count everywhere (the fullest
    host's), and cls_index points into the concatenation of the hosts' rows."""
    feats = _features([16, 16, 16, 16, 2, 2, 2, 2], max_len=16)
    packer = ExamplePacker(feats, row_multiple=1)
    global_rows = np.arange(8)
    host0 = packer.pack(global_rows, batching.BATCH_KEYS, 0, 2)  # four full rows
    host1 = packer.pack(global_rows, batching.BATCH_KEYS, 1, 2)  # would fit in one row
    assert host0["input_ids"].shape == host1["input_ids"].shape == (4, 16)
    ids = np.concatenate([host0["input_ids"], host1["input_ids"]]).reshape(-1)
    cls = np.concatenate([host0["cls_index"], host1["cls_index"]])
    assert (ids[cls] == CLS).all() and len(set(cls.tolist())) == 8
    assert cls[4:].min() >= 4 * 16  # host 1's examples live in host 1's rows


def test_train_iterator_packs_the_same_examples_as_the_padded_one():
    feats = _features(list(np.random.default_rng(3).integers(2, 17, 37)), max_len=16)
    plain = batching.TrainIterator(feats, 8, seed=5)
    packed = batching.TrainIterator(feats, 8, seed=5, packer=ExamplePacker(feats, 4))
    assert plain.steps_per_epoch == packed.steps_per_epoch == 5
    for _ in range(7):  # across an epoch boundary (and its padded last batch)
        a, b = next(plain), next(packed)
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["weights"], b["weights"])
        assert b["input_ids"].shape[0] % 4 == 0 and b["input_ids"].shape[0] <= 8
        assert b["attention_mask"].sum() == a["attention_mask"][a["weights"] > 0].sum()
    assert packed.get_state() == plain.get_state()
    evals = list(batching.eval_batches(feats, 16, packer=ExamplePacker(feats, 4)))
    assert sum(len(b["weights"]) for b in evals) == 48
    assert sum(b["weights"].sum() for b in evals) == 37


def _tiny_model(head: str, num_labels: int):
    """A tiny BERT with `head`, dropout off (packed and padded steps then compute alike)."""
    cfg = models.get_config(
        "tiny", vocab_size=2048, max_position_embeddings=64, head=head, num_labels=num_labels,
        hidden_dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return models.build(cfg)


def _loss_and_gradients_agree(model, loss_fn, padded: dict, packed: dict) -> tuple:
    """Asserts that a task's `loss_fn` (dropout off) gives the same loss and gradients on the
    padded and the packed batch of the same examples; returns (params, aux padded, aux packed)."""
    inputs = finetune.model_inputs(padded)
    params = meta.unbox(jax.jit(model.init)(jax.random.key(0), inputs)["params"])
    config = ml_collections.ConfigDict()

    def loss(p, batch):
        return loss_fn(config, model, p, batch, jax.random.key(1), False)

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (loss_a, aux_a), grads_a = grad(params, jax.tree.map(jnp.asarray, padded))
    (loss_p, aux_p), grads_p = grad(params, jax.tree.map(jnp.asarray, packed))
    np.testing.assert_allclose(loss_p, loss_a, rtol=1e-5)
    for a, p in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_p), strict=True):
        np.testing.assert_allclose(p, a, atol=1e-5, rtol=1e-4)
    return params, aux_a, aux_p


def test_packed_step_computes_the_padded_steps_logits_loss_and_gradients():
    """The fine-tuning loss of the same examples, packed or padded: equal logits, loss and
    gradients (dropout off; with dropout the two draw different masks)."""
    model = _tiny_model("classification", num_labels=3)
    lengths = list(np.random.default_rng(1).integers(2, 25, 12))
    feats = _features(lengths, max_len=32, seed=4)
    examples = np.array([*range(11), -1])
    padded = batching.take_rows(feats, examples)
    packed = ExamplePacker(feats, row_multiple=1).pack(examples, batching.BATCH_KEYS)
    assert packed["input_ids"].shape[0] < 12
    params, _, _ = _loss_and_gradients_agree(model, finetune.loss_fn, padded, packed)
    config = ml_collections.ConfigDict()
    evaluate = jax.jit(lambda p, b: finetune.eval_step(config, model, p, b))
    out_a, out_p = evaluate(params, padded), evaluate(params, packed)
    real = slice(0, 11)  # the padding example's outputs are meaningless (weight 0) in both
    np.testing.assert_allclose(out_p["loss"][real], out_a["loss"][real], atol=1e-5)
    np.testing.assert_array_equal(out_p["pred"][real], out_a["pred"][real])


def test_packed_token_classification_step_computes_the_padded_steps_loss_and_predictions():
    """NER's per-token loss on packed rows: each example's token logits are gathered back to its
    [L] positions, so loss, gradients and predictions equal the padded batch's."""
    from bertjax.tasks import ner

    model = _tiny_model("token_classification", num_labels=5)
    lengths = list(np.random.default_rng(2).integers(3, 25, 12))
    feats = _features(lengths, max_len=32, seed=6)
    rng = np.random.default_rng(7)  # first pieces labelled, others (and [CLS]/[SEP]/pads) -1
    labels = np.where(rng.random((12, 32)) < 0.6, rng.integers(0, 5, (12, 32)), -1)
    labels[feats["attention_mask"] == 0] = -1
    labels[:, 0] = -1
    feats["labels"] = labels.astype(np.int32)
    feats["window"] = np.arange(12, dtype=np.int32)
    feats["eval_set"] = np.ones(12, np.int32)
    examples = np.array([*range(11), -1])
    padded = batching.take_rows(feats, examples, ner.EVAL_KEYS)
    packed = ExamplePacker(feats, row_multiple=1).pack(examples, ner.EVAL_KEYS)
    assert packed["input_ids"].shape[0] < 12 and packed["labels"].shape == (12, 32)
    params, aux_a, aux_p = _loss_and_gradients_agree(model, ner.loss_fn, padded, packed)
    np.testing.assert_allclose(aux_p["token_accuracy"], aux_a["token_accuracy"], rtol=1e-6)
    config = ml_collections.ConfigDict()
    evaluate = jax.jit(lambda p, b: ner.eval_step(config, model, p, b))
    out_a, out_p = evaluate(params, padded), evaluate(params, packed)
    real = feats["attention_mask"][:11] > 0  # each real example's own tokens
    np.testing.assert_array_equal(out_p["pred"][:11][real], out_a["pred"][:11][real])
    np.testing.assert_array_equal(out_p["window"], out_a["window"])


def test_global_batch_takes_packed_rows_and_still_names_a_wrong_key():
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    feats = _features([4] * 16, max_len=16)
    packed = ExamplePacker(feats, row_multiple=8).pack(np.arange(16), batching.BATCH_KEYS)
    assert packed["input_ids"].shape[0] == 8  # 16 examples in 8 rows (rows split over 8)
    batch = sharding.global_batch(packed, mesh, 16)
    assert batch["input_ids"].shape == (8, 16) and batch["labels"].shape == (16,)
    packed["labels"] = packed["labels"][:15]
    with pytest.raises(ValueError, match="'labels': this host gave 15 rows, expected 16"):
        sharding.global_batch(packed, mesh, 16)


def test_packing_with_gradient_accumulation_is_an_error_naming_both_keys():
    config = ml_collections.ConfigDict(
        {"data": {"pack_sequences": True}, "optim": {"grad_accum_steps": 2}}
    )
    host = HostInfo(seed=0, process_index=0, process_count=1, local_batch_size=8,
                    global_batch_size=8, workdir="")  # fmt: skip
    with pytest.raises(ValueError, match="pack_sequences.*grad_accum_steps=2"):
        finetune.packer(config, host, _features([3], 8))
