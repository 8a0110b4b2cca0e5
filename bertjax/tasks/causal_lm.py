"""Causal language modelling (GPT-2): L = -(1/N) sum_i log p(w_i | w_<i).

Batches come from `bertjax.data.lm` (packed rows: `input_ids`, `targets` = the next tokens, and
with `data.document_masking` also `segment_ids`, `positions`); every position of every row is a
real target, so the loss is the plain mean token cross-entropy. Eval reports the loss over the
whole held-out set, its perplexity exp(loss), and next-token accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bertjax import models
from bertjax.models import gpt
from bertjax.tasks.base import HostInfo, Task, TaskData
from bertjax.tasks.bert_pretrain import build_checked, model_config


def build_data(config: ml_collections.ConfigDict, host: HostInfo) -> TaskData:
    from bertjax.data import lm  # tokenizers etc. only when used

    data = lm.build_lm_data(
        config.data,
        seed=host.seed,
        global_batch_size=host.global_batch_size,
        process_index=host.process_index,
        process_count=host.process_count,
        workdir=host.workdir,
    )
    max_batches = int(config.get("eval_batches", 0))
    return TaskData(
        train=data.train,
        # data.eval_fraction = 0: no held-out documents, no eval.
        eval_sets=lambda: {"eval": data.eval_batches(max_batches)} if len(data.eval_stream) else {},
        vocab_size=data.tokenizer.vocab_size,
        steps_per_epoch=data.train.steps_per_epoch,
        extras={
            "tokenizer": data.tokenizer,
            "cleaning": data.stats.as_dict(),
        },
    )


def build_model(config: ml_collections.ConfigDict, data: TaskData | None):
    cfg = model_config(config, data.vocab_size if data is not None else None, "causal_lm")
    if cfg.model_type != "gpt2":
        raise ValueError(
            f"task causal_lm needs a GPT-2 model, but config.model.preset="
            f"{config.model.preset!r} gives model_type={cfg.model_type!r}; use a GPT preset "
            "(gpt_tiny, gpt2, gpt2-medium) or set config.model.model_type='gpt2'"
        )
    return build_checked(config, cfg)


def batch_spec(
    config: ml_collections.ConfigDict, model_cfg: models.ModelConfig, batch_size: int
) -> dict[str, jax.ShapeDtypeStruct]:
    del model_cfg
    shape = (batch_size, int(config.data.max_seq_length))
    keys = ["input_ids", "targets"]
    if config.data.get("document_masking", False):
        keys += ["segment_ids", "positions"]
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in keys}


def _token_losses(model, params, batch, rng, train) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy [B, T] and correctness [B, T] (float32)."""
    rngs = {"dropout": rng} if train else None
    logits = model.apply({"params": params}, batch, train=train, rngs=rngs)["logits"]
    logits = logits.astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    # Correct when the target's logit is the largest (ties aside, what argmax says): the max is
    # shared with the softmax, while an argmax over 50k logits would be a pass of its own.
    target_logit = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    correct = (target_logit >= logits.max(-1)).astype(jnp.float32)
    return xent, correct


def loss_fn(config, model, params, batch, rng, train):
    del config
    xent, correct = _token_losses(model, params, batch, rng, train)
    loss = xent.mean()
    return loss, {"loss": loss, "perplexity": jnp.exp(loss), "accuracy": correct.mean()}


def eval_step(config, model, params, batch):
    del config
    xent, correct = _token_losses(model, params, batch, None, False)
    weights = batch["weights"].astype(jnp.float32)  # 0 for the padding rows of the last batch
    return {
        "loss_sum": xent.sum(-1) * weights,
        "correct": correct.sum(-1) * weights,
        "tokens": jnp.full(weights.shape, xent.shape[1], jnp.float32) * weights,
    }


def eval_summary(config, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    del config
    tokens = float(outputs["tokens"].sum())
    loss = float(outputs["loss_sum"].sum()) / max(tokens, 1.0)
    return {
        "loss": loss,
        "perplexity": float(np.exp(min(loss, 80.0))),
        "accuracy": float(outputs["correct"].sum()) / max(tokens, 1.0),
        "tokens": tokens,
    }


def init_params(config, model_cfg, params):
    """GPT-2's initialisation: residual output projections scaled by 1/sqrt(2 L)."""
    del config
    return gpt.scale_residual_init(model_cfg, params)


TASK = Task(
    name="causal_lm",
    build_data=build_data,
    build_model=build_model,
    batch_spec=batch_spec,
    loss_fn=loss_fn,
    eval_step=eval_step,
    eval_summary=eval_summary,
    init_params=init_params,
)
