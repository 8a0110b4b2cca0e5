"""BERT pretraining: masked LM + next-sentence prediction, L = L_MLM + lambda * L_NSP.

As google-research/bert's run_pretraining.py: the MLM loss is the cross-entropy averaged over
the real (weight 1) masked positions of the batch, the NSP loss the mean cross-entropy over
sentence pairs (rows, or the instances of packed rows with ``data.pack_sequences``);
``config.nsp_weight`` is lambda. With ``config.data.sentence_objective == "sop"`` the
second head predicts sentence order instead (same labels layout); with ``"none"`` it is unused.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bertjax import checkpointing, models
from bertjax.tasks.base import HostInfo, Task, TaskData

VOCAB_MULTIPLE = 128

# Keys of config.model that are not ModelConfig fields.
_NON_MODEL_KEYS = ("preset",)


def build_data(config: ml_collections.ConfigDict, host: HostInfo) -> TaskData:
    from bertjax import data as data_lib  # heavy imports (tokenizers, grain) only when used

    pretraining = data_lib.build_pretraining_data(
        config.data,
        seed=host.seed,
        local_batch_size=host.local_batch_size,
        process_index=host.process_index,
        process_count=host.process_count,
        vocab_dir=host.workdir,
    )
    return TaskData(
        train=pretraining.train_iterator(),
        eval_sets=lambda: {"eval": pretraining.eval_iterator(config.eval_batches)},
        vocab_size=pretraining.vocab_size,
        extras={"tokenizer": pretraining.tokenizer},
    )


def model_config(
    config: ml_collections.ConfigDict, vocab_size: int | None, head: str
) -> models.ModelConfig:
    """ModelConfig from ``config.model`` (a preset plus overrides), sized to the vocabulary.

    ``config.model.vocab_size == 0`` takes the tokenizer's size rounded up to a multiple of
    `VOCAB_MULTIPLE` (or ``config.data.vocab_size`` when there is no data, as in a dry run).
    A set vocabulary smaller than the tokenizer's is an error; a larger one is allowed.
    """
    overrides: dict[str, Any] = {
        k: v for k, v in config.model.items() if k not in _NON_MODEL_KEYS and k != "vocab_size"
    }
    configured = int(config.model.get("vocab_size", 0))
    if configured > 0:
        if vocab_size is not None and configured < vocab_size:
            raise ValueError(
                f"config.model.vocab_size={configured} is smaller than the tokenizer's "
                f"vocabulary ({vocab_size} tokens)"
            )
        vocab = configured
    elif vocab_size is not None:
        # Rounded up to a multiple of 128 (as Megatron-LM): the embedding then splits evenly
        # over any tensor-parallel size and maps well onto TPU/GPU tiles. The extra rows are
        # never targets; the softmax learns to give them no mass.
        vocab = -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    else:
        vocab = int(config.data.vocab_size)
    return models.get_config(config.model.preset, vocab_size=vocab, head=head, **overrides)


def build_model(config: ml_collections.ConfigDict, data: TaskData | None):
    cfg = model_config(config, data.vocab_size if data is not None else None, "pretraining")
    return build_checked(config, cfg)


def build_checked(config: ml_collections.ConfigDict, cfg: models.ModelConfig):
    """(cfg, module) once config.data.max_seq_length is checked against cfg's positions."""
    seq = int(config.data.max_seq_length)
    if seq > cfg.max_position_embeddings:
        raise ValueError(
            f"config.data.max_seq_length={seq} exceeds config.model.max_position_embeddings="
            f"{cfg.max_position_embeddings}"
        )
    return cfg, models.build(cfg)


def batch_spec(
    config: ml_collections.ConfigDict, model_cfg: models.ModelConfig, batch_size: int
) -> dict[str, jax.ShapeDtypeStruct]:
    del model_cfg
    seq, preds = int(config.data.max_seq_length), int(config.data.max_predictions_per_seq)
    i32, f32 = jnp.int32, jnp.float32
    spec = {
        "input_ids": jax.ShapeDtypeStruct((batch_size, seq), i32),
        "token_type_ids": jax.ShapeDtypeStruct((batch_size, seq), i32),
        "attention_mask": jax.ShapeDtypeStruct((batch_size, seq), i32),
        "masked_lm_positions": jax.ShapeDtypeStruct((batch_size, preds), i32),
        "masked_lm_ids": jax.ShapeDtypeStruct((batch_size, preds), i32),
        "masked_lm_weights": jax.ShapeDtypeStruct((batch_size, preds), f32),
        "next_sentence_labels": jax.ShapeDtypeStruct((batch_size,), i32),
    }
    if config.data.get("pack_sequences", False):
        # Packed rows (bertjax/data/packing.py): up to K instances per row, one NSP slot each.
        from bertjax.data.settings import DataSettings  # its defaults for absent keys

        k = DataSettings.from_config(config.data).max_instances_per_row
        spec["segment_ids"] = jax.ShapeDtypeStruct((batch_size, seq), i32)
        spec["positions"] = jax.ShapeDtypeStruct((batch_size, seq), i32)
        spec["cls_positions"] = jax.ShapeDtypeStruct((batch_size, k), i32)
        spec["next_sentence_labels"] = jax.ShapeDtypeStruct((batch_size, k), i32)
        spec["next_sentence_weights"] = jax.ShapeDtypeStruct((batch_size, k), f32)
    return spec


def _uses_sentence_head(config: ml_collections.ConfigDict) -> bool:
    return config.data.get("sentence_objective", "nsp") != "none"


def _per_example(out: dict[str, jax.Array], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-row sums over the real MLM targets and the real NSP slots (loss, correct, count).

    Unpacked rows have one NSP slot; packed rows K of them ([B, K] labels and weights).
    """
    mlm_logits = out["mlm_logits"].astype(jnp.float32)  # [B, P, V]
    weights = batch["masked_lm_weights"].astype(jnp.float32)
    ids = batch["masked_lm_ids"]
    mlm_xent = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, ids)
    # Correct when the target's logit is the largest (ties aside, what argmax says): the max
    # is shared with the softmax, while an argmax over 30k logits is a pass of its own (about
    # 4% of a CPU train step; benchmarks/RESULTS.md).
    target_logit = jnp.take_along_axis(mlm_logits, ids[..., None], axis=-1)[..., 0]
    mlm_hit = (target_logit >= mlm_logits.max(-1)).astype(jnp.float32)
    nsp_logits = out["nsp_logits"].astype(jnp.float32)  # [B, 2] or [B, K, 2]
    labels = batch["next_sentence_labels"]
    nsp_weights = batch.get("next_sentence_weights")
    if nsp_weights is None:
        nsp_weights = jnp.ones(labels.shape, jnp.float32)
    nsp_weights = nsp_weights.astype(jnp.float32)
    nsp_xent = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, labels) * nsp_weights
    nsp_hit = (nsp_logits.argmax(-1) == labels).astype(jnp.float32) * nsp_weights
    rows = nsp_xent.shape[0]
    return {
        "mlm_loss_sum": (mlm_xent * weights).sum(-1),
        "mlm_correct": (mlm_hit * weights).sum(-1),
        "mlm_count": weights.sum(-1),
        "nsp_loss_sum": nsp_xent.reshape(rows, -1).sum(-1),
        "nsp_correct": nsp_hit.reshape(rows, -1).sum(-1),
        "nsp_count": nsp_weights.reshape(rows, -1).sum(-1),
    }


def loss_fn(config, model, params, batch, rng, train):
    rngs = {"dropout": rng} if train else None
    out = model.apply({"params": params}, batch, train=train, rngs=rngs)
    rows = _per_example(out, batch)
    # As google-research/bert: sum over real targets / (their count + 1e-5).
    count = rows["mlm_count"].sum()
    mlm_loss = rows["mlm_loss_sum"].sum() / (count + 1e-5)
    metrics = {
        "mlm_loss": mlm_loss,
        "mlm_accuracy": rows["mlm_correct"].sum() / jnp.maximum(count, 1.0),
    }
    loss = mlm_loss
    if _uses_sentence_head(config):
        nsp_count = jnp.maximum(rows["nsp_count"].sum(), 1.0)
        nsp_loss = rows["nsp_loss_sum"].sum() / nsp_count
        loss = loss + config.nsp_weight * nsp_loss
        metrics["nsp_loss"] = nsp_loss
        metrics["nsp_accuracy"] = rows["nsp_correct"].sum() / nsp_count
    metrics["loss"] = loss
    return loss, metrics


def eval_step(config, model, params, batch):
    del config
    out = model.apply({"params": params}, batch, train=False)
    return _per_example(out, batch)


def eval_summary(config, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    count = float(outputs["mlm_count"].sum())
    mlm_loss = float(outputs["mlm_loss_sum"].sum()) / max(count, 1e-5)
    summary = {
        "mlm_loss": mlm_loss,
        "mlm_accuracy": float(outputs["mlm_correct"].sum()) / max(count, 1.0),
        "mlm_perplexity": float(np.exp(min(mlm_loss, 80.0))),
        "examples": float(len(outputs["mlm_count"])),
    }
    loss = mlm_loss
    if _uses_sentence_head(config):
        nsp_count = max(float(outputs["nsp_count"].sum()), 1.0)
        summary["nsp_loss"] = float(outputs["nsp_loss_sum"].sum()) / nsp_count
        summary["nsp_accuracy"] = float(outputs["nsp_correct"].sum()) / nsp_count
        loss += config.nsp_weight * summary["nsp_loss"]
    summary["loss"] = loss
    return summary


def init_params(config: ml_collections.ConfigDict, model_cfg: models.ModelConfig, params: Any):
    """Fresh params, or those of ``config.init_from`` (continued pretraining, phase 2).

    ``init_from`` is a bertjax run directory or checkpoint, or a Hugging Face
    BertForPreTraining directory (config.json + model.safetensors). Only the params are taken:
    the optimizer, step and schedule start afresh (as google-research/bert's init_checkpoint).
    The loop checks that every shape fits the configured model.
    """
    path = config.get("init_from", "")
    if not path:
        return params
    if (pathlib.Path(path) / "config.json").is_file():
        from bertjax.convert import from_hf

        _, loaded = from_hf(path, head="pretraining")
        return loaded
    return checkpointing.restore_params(path)


TASK = Task(
    name="bert_pretrain",
    build_data=build_data,
    build_model=build_model,
    batch_spec=batch_spec,
    loss_fn=loss_fn,
    eval_step=eval_step,
    eval_summary=eval_summary,
    init_params=init_params,
)
