"""GPT-2 (Radford et al. 2019) in Flax linen: a pre-LN Transformer decoder on the shared layers.

    x = word_embeddings[ids] + position_embeddings[positions]        (learned positions)
    x = x + Drop(MHA(LN(x)))   ;   x = x + Drop(FFN_gelu_new(LN(x)))  (num_layers times, causal)
    logits = LN_f(x) @ word_embeddings^T                             (tied, no bias)

Parameter tree (`bertjax/convert/hf_gpt2.py` maps it to Hugging Face's GPT2LMHeadModel):

    word_embeddings/embedding [vocab, embed]        position_embeddings/embedding [position, embed]
    layer_{i}/attention/{query,key,value,out}, attention_layer_norm, mlp/{wi,wo}, mlp_layer_norm
    final_layer_norm/{scale,bias}

`decode=True` (see `bertjax/generate.py`) turns on the KV cache of every attention layer; the
model then also keeps each row's next position in the "cache" collection, so that a call on a
chunk of new tokens needs no positions from the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax import kernels
from bertjax.models import attention, layers
from bertjax.models.config import ModelConfig

Array = jax.Array
Batch = Mapping[str, Array]


class GPTLMHeadModel(nn.Module):
    """GPT-2 with its tied language-model head.

    `apply({"params": p}, batch, train=False)` with batch keys:
      input_ids [B, T] (required); attention_mask [B, T] (1 = real token; only keys are masked,
      as in Hugging Face); positions [B, T] (default 0..T-1); segment_ids [B, T] (packed
      documents: no attention across different ids).
    Returns {"hidden_states": [B, T, H] (after the final LayerNorm), "logits": [B, T, V] float32}.

    Decode mode (`decode=True`, mutable=["cache"]): `init` with a [B, S_max] batch creates an empty
    cache for up to S_max tokens per row; each later call appends a chunk [B, L] per row.
    `decode_lengths` [B] says how many of the L tokens of each row are real (right-padded prompts
    of different lengths); the padding slots are overwritten by the next chunk and never attended.
    `logits_positions` [B, P] computes the logits only at those positions of the chunk (e.g. each
    prompt's last token) instead of all T: the vocabulary projection is the costliest matmul.

    `embeddings` [B, T, H]: continue from this embedding output (word + position) instead of
    looking up `input_ids` (attributions); the embedding output of a call is sown into the
    "intermediates" collection as "embeddings".
    """

    cfg: ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        batch: Batch,
        train: bool = False,
        *,
        decode_lengths: Array | None = None,
        logits_positions: Array | None = None,
        embeddings: Array | None = None,
    ) -> dict[str, Array]:
        cfg = self.cfg
        input_ids = batch["input_ids"]
        length = input_ids.shape[1]
        deterministic = not train

        if self.decode:
            positions = self._decode_positions(input_ids, decode_lengths)
            mask = None  # the attention layers mask causally over their caches
        else:
            if length > cfg.max_position_embeddings:
                raise ValueError(
                    f"sequence length {length} > max_position_embeddings "
                    f"{cfg.max_position_embeddings}"
                )
            positions = batch.get("positions")
            if positions is None:
                positions = jnp.arange(length)[None, :]
            padding, segments = batch.get("attention_mask"), batch.get("segment_ids")
            if padding is None:
                # Structured, so that a fused kernel (cuDNN) can use is_causal and skip blocks.
                mask = attention.AttentionMask(segment_ids=segments, causal=True)
            else:
                # Dense: a padding mask may be left padding (as for Hugging Face generation),
                # which the fused path's per-row key lengths cannot express.
                mask = attention.make_attention_mask(
                    length, padding, causal=True, segment_ids=segments
                )

        word_embeddings = self._embed(cfg.vocab_size, ("vocab", "embed"), "word_embeddings")
        position_embeddings = self._embed(
            cfg.max_position_embeddings, ("position", "embed"), "position_embeddings"
        )
        if embeddings is None:
            x = word_embeddings(input_ids) + position_embeddings(positions)
        else:  # attributions differentiate with respect to the embedding sum
            x = embeddings.astype(cfg.compute_dtype)
        # The embedding output (word + position, before dropout), kept only when the caller
        # makes "intermediates" mutable: what `bertjax.explain` attributes to.
        self.sow("intermediates", "embeddings", x)
        x = nn.with_logical_constraint(x, layers.ACT_BTE)
        x = layers.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
        layer = layers.layer_class(cfg)
        for i in range(cfg.num_layers):
            x = layer(cfg, pre_ln=True, decode=self.decode, name=f"layer_{i}")(
                x, mask, deterministic, decode_lengths
            )
        hidden = layers.LayerNorm(
            cfg.layer_norm_eps, cfg.compute_dtype, cfg.params_dtype, name="final_layer_norm"
        )(x)

        if logits_positions is not None:
            hidden_for_logits = jnp.take_along_axis(
                hidden, logits_positions[:, :, None].astype(jnp.int32), axis=1
            )
        else:
            hidden_for_logits = hidden
        # Tied head: logits = h @ E^T, matmul in the compute dtype, accumulated in float32.
        logits = kernels.tied_logits(
            hidden_for_logits, word_embeddings.embedding, cfg.compute_dtype, cfg.kernels
        )
        logits = nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))
        return {"hidden_states": hidden, "logits": logits}

    def _embed(self, num: int, names: tuple[str, str], name: str) -> nn.Embed:
        return nn.Embed(
            num_embeddings=num,
            features=self.cfg.hidden_size,
            dtype=self.cfg.compute_dtype,
            param_dtype=self.cfg.params_dtype,
            embedding_init=layers.kernel_init(self.cfg, names),
            name=name,
        )

    def _decode_positions(self, input_ids: Array, decode_lengths: Array | None) -> Array:
        """Positions of a decode chunk: each row continues from its own next position."""
        batch, length = input_ids.shape
        initialized = self.has_variable("cache", "position_index")
        index = self.variable("cache", "position_index", jnp.zeros, (batch,), jnp.int32)
        if not initialized:  # `init` with the [B, S_max] shape of the cache
            return jnp.broadcast_to(jnp.arange(length)[None, :], (batch, length))
        positions = index.value[:, None] + jnp.arange(length)[None, :]
        step = jnp.full((batch,), length, jnp.int32) if decode_lengths is None else decode_lengths
        index.value = index.value + step.astype(jnp.int32)
        # A padding slot may run past the table; clamp it (its output is never used).
        return jnp.minimum(positions, self.cfg.max_position_embeddings - 1)


def build(cfg: ModelConfig) -> GPTLMHeadModel:
    """The GPT-2 module of `cfg` (its only head is "causal_lm")."""
    if cfg.head != "causal_lm":
        raise ValueError(f"GPT-2 has no head {cfg.head!r}; supported: ['causal_lm']")
    return GPTLMHeadModel(cfg)


def scale_residual_init(cfg: ModelConfig, params: Any) -> Any:
    """GPT-2's init: residual output projections scaled by 1/sqrt(2 * num_layers).

    The shared layers draw every kernel with std = initializer_range; GPT-2 (and Hugging Face's
    `_init_weights`) shrinks the attention output and second FFN kernels so that the residual
    stream's variance does not grow with depth. Apply once to freshly initialised (unboxed) params.
    """
    scale = (2.0 * cfg.num_layers) ** -0.5

    def rescale(path: tuple[Any, ...], leaf: Any) -> Any:
        keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        is_residual_out = keys[-3:] in (["attention", "out", "kernel"], ["mlp", "wo", "kernel"])
        return leaf * jnp.asarray(scale, leaf.dtype) if is_residual_out else leaf

    return jax.tree_util.tree_map_with_path(rescale, params)
