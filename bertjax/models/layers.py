"""Transformer building blocks shared by BERT (post-LN encoder) and GPT (pre-LN decoder).

Written from the formulas of "Attention Is All You Need" (Vaswani et al. 2017):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V
    MultiHead(x)       = Concat(head_1, ..., head_h) W^O
    head_i             = Attention(x W_i^Q, x W_i^K, x W_i^V)
    FFN(x)             = act(x W_1 + b_1) W_2 + b_2
    LayerNorm(x)       = (x - mean) / sqrt(var + eps) * gamma + beta

The backend-specific kernels (XLA:CPU's bf16 layouts and friends) are in `bertjax/kernels`,
chosen by `ModelConfig.kernels`; the attention implementations in `attention.py`.

Every parameter names its logical axes (`nn.with_logical_partitioning`) and the main activations
carry `nn.with_logical_constraint`, so `bertjax/sharding.py` can map them onto any mesh. Parameters
are stored in `param_dtype`; matmuls run in `dtype`; LayerNorm statistics, softmax and logits are
float32 whatever `dtype` is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from bertjax import kernels
from bertjax.models import attention
from bertjax.models.config import ModelConfig
from bertjax.models.dropout import Dropout

Array = jax.Array

# Logical activation axis names (see docs/architecture.md).
ACT_BTE = ("act_batch", "act_length", "act_embed")
ACT_BTNK = ("act_batch", "act_length", "act_heads", "act_kv")
ACT_BTM = ("act_batch", "act_length", "act_mlp")


ACTIVATIONS: dict[str, Callable[[Array, str], Array]] = {
    # (x, kernels) -> act(x); the GELUs' form depends on the kernel set (bertjax/kernels).
    "gelu": lambda x, k: kernels.gelu(x, approximate=False, kernels=k),  # BERT: x Phi(x)
    "gelu_new": lambda x, k: kernels.gelu(x, approximate=True, kernels=k),  # GPT-2: tanh form
    "relu": lambda x, k: jax.nn.relu(x),
}


def remat_policy(name: str) -> Callable | None:
    """The `jax.checkpoint` policy of a `ModelConfig.remat` name ("full" saves nothing)."""
    policies = {
        "full": None,
        "dots_saveable": jax.checkpoint_policies.dots_saveable,
        "dots_with_no_batch_dims_saveable": (
            jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        ),
    }
    if name not in policies:
        raise ValueError(
            f"unknown remat policy {name!r}; expected 'none' or one of {list(policies)}"
        )
    return policies[name]


class _KernelPartitioned(nn.LogicallyPartitioned):
    """Logical names that are not imposed as a constraint when unboxed.

    The names give the param's sharding (`nn.get_partition_spec`), by which train.py places
    the params; a constraint at every unbox would add nothing. (It was needed when the dense
    layers were `nn.DenseGeneral`, which draws a multi-axis kernel flat and reshapes it: under
    a mesh the default unbox constrained the flat kernel with the full shape's names and
    failed.)
    """

    def unbox(self, apply_constraint: bool = True):
        del apply_constraint
        return self.value


def initializer(cfg: ModelConfig, kind: str = "truncated_normal") -> nn.initializers.Initializer:
    """BERT's kernel initializer: truncated normal (stddev = initializer_range before the cut at
    2 stddev), or with kind="normal" a plain normal of that stddev."""
    if kind == "normal":
        return nn.initializers.normal(stddev=cfg.initializer_range)
    return nn.initializers.truncated_normal(stddev=cfg.initializer_range)


def kernel_init(
    cfg: ModelConfig, names: tuple[str, ...], kind: str = "truncated_normal"
) -> nn.initializers.Initializer:
    """`initializer(cfg, kind)` with logical axis names."""
    base = initializer(cfg, kind)

    def init(key: Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32):
        return _KernelPartitioned(base(key, shape, dtype), names)

    return init


def zeros_init(names: tuple[str, ...]) -> nn.initializers.Initializer:
    def init(key: Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32):
        return _KernelPartitioned(jnp.zeros(shape, dtype), names)  # see _KernelPartitioned

    return init


class Dense(nn.Module):
    """x @ kernel + bias over the trailing `axis` dims of x: `nn.DenseGeneral`'s parameters
    (kernel [in..., out...], bias [out...]), its initialisation and its maths, computed by
    `kernels.linear` (which keeps bf16 matmuls on XLA:CPU's fast path)."""

    cfg: ModelConfig
    features: tuple[int, ...]
    names: tuple[str, ...]  # logical axes of the kernel: inputs then outputs
    axis: tuple[int, ...] = (-1,)
    # The decode layout: the kernel stored as a 2-D [out, in] matrix (`to_decode_layout` makes
    # it from the training layout), which the few rows of a decode step multiply fastest.
    transposed: bool = False
    init: str = "truncated_normal"  # the kernel's: see `kernel_init`

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        axes = sorted(a % x.ndim for a in self.axis)
        if axes != list(range(x.ndim - len(axes), x.ndim)):
            raise ValueError(f"Dense contracts trailing axes only; got axis={self.axis}")
        in_shape = x.shape[axes[0] :]
        k, n = math.prod(in_shape), math.prod(self.features)
        x = x.reshape(*x.shape[: axes[0]], k)
        if self.transposed:
            kernel_t = self.param("kernel", initializer(cfg, self.init), (n, k), cfg.params_dtype)
            bias = self.param("bias", nn.initializers.zeros, self.features, cfg.params_dtype)
            y = kernels.linear_decode(x, kernel_t, bias.reshape(n), cfg.compute_dtype, cfg.kernels)
            return y.reshape(*y.shape[:-1], *self.features)
        kernel = self.param(
            "kernel",
            kernel_init(cfg, self.names, self.init),
            in_shape + self.features,
            cfg.params_dtype,
        )
        bias = self.param(
            "bias", zeros_init(self.names[len(in_shape) :]), self.features, cfg.params_dtype
        )
        y = kernels.linear(x, kernel.reshape(k, n), bias.reshape(n), cfg.compute_dtype, cfg.kernels)
        return y.reshape(*y.shape[:-1], *self.features)


def to_decode_layout(params: Any, decode_shapes: Any) -> Any:
    """`params` (the training layout) as a module in decode mode reads them.

    Every dense kernel [in..., out...] becomes the 2-D [out, in] of `Dense(transposed=True)`;
    the other leaves are unchanged. `decode_shapes`: the decode-mode module's param shapes
    (`jax.eval_shape` of its `init`), which say how each kernel splits into in and out. Both
    may hold logical-partitioning boxes; the result holds plain arrays.
    """
    params, decode_shapes = nn.meta.unbox(params), nn.meta.unbox(decode_shapes)

    def convert(path: tuple[Any, ...], leaf: Array, target: Any) -> Array:
        if getattr(path[-1], "key", None) != "kernel":
            return leaf
        n, k = target.shape
        if leaf.size != n * k:
            raise ValueError(
                f"{jax.tree_util.keystr(path)}: {leaf.shape} is not a [{k}, {n}] kernel"
            )
        return leaf.reshape(k, n).T

    return jax.tree_util.tree_map_with_path(convert, params, decode_shapes)


def dense(
    cfg: ModelConfig,
    features: int | tuple[int, ...],
    names: tuple[str, ...],
    *,
    axis: int | tuple[int, ...] = -1,
    transposed: bool = False,
    init: str = "truncated_normal",
    name: str,
) -> Dense:
    """A Dense (kernel + bias) whose kernel axes are `names` (inputs then outputs); `init`:
    its kernel's initializer (`kernel_init`)."""
    return Dense(
        cfg,
        features=(features,) if isinstance(features, int) else tuple(features),
        names=names,
        axis=(axis,) if isinstance(axis, int) else tuple(axis),
        transposed=transposed,
        init=init,
        name=name,
    )


class LayerNorm(nn.Module):
    """LayerNorm over the last axis; statistics in float32, output in the compute dtype.

    Params `scale` (gamma, init 1) and `bias` (beta, init 0), logical axis `norm`.
    """

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (features,),
            self.param_dtype,
        )
        bias = self.param("bias", zeros_init(("norm",)), (features,), self.param_dtype)
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        # Biased variance, as torch.nn.LayerNorm and the original BERT.
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * lax.rsqrt(var + self.eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with W^Q, W^K, W^V, W^O (all with biases).

    Params: query/key/value kernel [embed, heads, kv] + bias [heads, kv];
            out kernel [heads, kv, embed] + bias [embed].

    decode=True turns on the KV cache (Flax "cache" collection) for autoregressive decoding, and
    the dense kernels are then read in the decode layout (`Dense(transposed=True)`):
      * `init` / the first apply with a [B, S_max, E] input creates `cached_key`, `cached_value`
        [B, N, S_max, D], `cached_valid` [B, S_max] (which slots hold a real token) and
        `cache_index` (a scalar: the next write slot, the same for every row) and returns the
        plain (non-cached) attention. Heads before positions: each decode step contracts a
        head's keys and values in place, where a [B, S, N, D] cache would be transposed (copied
        whole) in every layer at every step;
      * later calls take a chunk [B, L, E] (L = 1 per step, or a whole prompt block), write its
        keys/values at slots cache_index .. cache_index + L - 1 of every row, and let query i
        see the valid slots <= cache_index + i (causal over the cache);
      * `decode_lengths` [B] says how many of the L new tokens of each row are real (prompts of
        different lengths, right-padded); the slots of a row's padding are never valid, so
        never attended. Default: all L. One write position for all rows makes the write a
        `dynamic_update_slice` that XLA does in place; per-row positions need a scatter, which
        XLA:CPU runs on a float32 copy of the whole bf16 cache (85 ms of a 150 ms GPT-2 step
        at batch 32). The caller sizes the cache (`generate` starts it short and enlarges it
        with `grow_cache` as it fills); a write past its end is not detected (XLA clamps the
        slot).
    """

    cfg: ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: attention.AttentionMask | Array | None,
        deterministic: bool,
        decode_lengths: Array | None = None,
    ) -> Array:
        cfg = self.cfg
        heads = (cfg.num_heads, cfg.head_dim)
        q, k, v = (
            nn.with_logical_constraint(
                dense(cfg, heads, ("embed", "heads", "kv"), transposed=self.decode, name=n)(x),
                ACT_BTNK,
            )
            for n in ("query", "key", "value")
        )
        creating_cache = self.decode and not self.has_variable("cache", "cached_key")
        if self.decode and not creating_cache:
            # Causal over the cache; a `mask` argument is not used in decode mode.
            keys, values, cache_mask = self._update_cache(k, v, decode_lengths)
            out = attention.cached_attention(q, keys, values, cache_mask)
        elif cfg.attention_impl == "reference" and deterministic:
            out, probs = attention.reference_attention(
                q, k, v, attention.dense_mask(mask, q.shape[1]), return_probs=True
            )
            # Kept only when the caller makes "intermediates" mutable (bertjax.explain runs the
            # model with attention_impl="reference" to read every layer's and head's maps).
            self.sow("intermediates", "attention_probs", probs)
        else:
            train_dropout = not deterministic and cfg.attention_dropout > 0
            out = attention.attend(
                q,
                k,
                v,
                mask,
                impl=cfg.attention_impl,
                kernels=cfg.kernels,
                dropout_rate=cfg.attention_dropout if train_dropout else 0.0,
                dropout_rng=self.make_rng("dropout") if train_dropout else None,
            )
        if creating_cache:
            self._create_cache(k.shape)  # `init`: the plain attention above, an empty cache
        out = nn.with_logical_constraint(out, ACT_BTNK)
        out = dense(
            cfg,
            cfg.hidden_size,
            ("heads", "kv", "embed"),
            axis=(-2, -1),
            transposed=self.decode,
            name="out",
        )(out)
        return nn.with_logical_constraint(out, ACT_BTE)

    def _create_cache(self, shape: tuple[int, ...]) -> tuple[nn.Variable, ...]:
        """The cache variables, for `shape` = the [B, S_max, N, D] keys of the `init` input."""
        batch, max_length, heads, head_dim = shape
        cache_shape = (batch, heads, max_length, head_dim)
        dtype = kernels.cache_dtype(self.cfg.compute_dtype, self.cfg.kernels)
        return (
            self.variable("cache", "cached_key", jnp.zeros, cache_shape, dtype),
            self.variable("cache", "cached_value", jnp.zeros, cache_shape, dtype),
            self.variable("cache", "cached_valid", jnp.zeros, (batch, max_length), jnp.bool_),
            self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32),
        )

    def _update_cache(
        self, k: Array, v: Array, decode_lengths: Array | None
    ) -> tuple[Array, Array, Array]:
        """Writes a chunk's keys/values at the cache index; (keys, values, mask [B,1,L,S])."""
        batch, length = k.shape[:2]
        cached_key, cached_value, cached_valid, cache_index = self._create_cache(k.shape)
        max_length = cached_key.value.shape[2]
        index = cache_index.value

        def write(cache: Array, new: Array) -> Array:  # cache [B, N, S, D], new [B, L, N, D]
            new = new.swapaxes(1, 2).astype(cache.dtype)
            return lax.dynamic_update_slice(cache, new, (0, 0, index, 0))

        keys, values = write(cached_key.value, k), write(cached_value.value, v)
        real = jnp.ones((batch, length), jnp.bool_)
        if decode_lengths is not None:
            real = jnp.arange(length)[None, :] < decode_lengths[:, None]
        valid = lax.dynamic_update_slice(cached_valid.value, real, (0, index))
        cached_key.value, cached_value.value, cached_valid.value = keys, values, valid
        cache_index.value = index + length

        query_slot = index + jnp.arange(length)  # [L]
        causal = jnp.arange(max_length)[None, :] <= query_slot[:, None]  # [L, S]
        mask = jnp.logical_and(valid[:, None, None, :], causal[None, None])  # [B, 1, L, S]
        return keys, values, mask


_SLOT_AXES = {"cached_key": 2, "cached_value": 2, "cached_valid": 1}  # see _create_cache


def grow_cache(cache: Any, max_length: int) -> Any:
    """A decode-mode "cache" collection with `max_length` slots per row: empty slots appended.

    A decode step's attention reads every slot of the cache, filled or not, so a decoder can
    start with a short cache and grow it as it fills (`generate` doubles it) rather than read
    a cache sized for the whole generation at every step. The new slots are not valid (never
    attended) until written; write slots (`cache_index`) and positions are unchanged.
    """

    def grow(path: tuple, leaf: Array) -> Array:
        axis = _SLOT_AXES.get(getattr(path[-1], "key", None))
        if axis is None:
            return leaf
        if leaf.shape[axis] > max_length:
            raise ValueError(
                f"grow_cache: {jax.tree_util.keystr(path)} already has {leaf.shape[axis]} "
                f"slots, more than max_length={max_length}"
            )
        widths = [(0, 0)] * leaf.ndim
        widths[axis] = (0, max_length - leaf.shape[axis])
        return jnp.pad(leaf, widths)  # zeros: empty keys/values, slots not valid

    return jax.tree_util.tree_map_with_path(grow, cache)


class FeedForward(nn.Module):
    """Position-wise FFN: act(x W_1 + b_1) W_2 + b_2 (W_1 [embed, mlp], W_2 [mlp, embed]).

    decode=True reads the kernels in the decode layout (`Dense(transposed=True)`)."""

    cfg: ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        h = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), transposed=self.decode, name="wi")(
            x
        )
        h = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](h, cfg.kernels), ACT_BTM)
        out = dense(cfg, cfg.hidden_size, ("mlp", "embed"), transposed=self.decode, name="wo")(h)
        return nn.with_logical_constraint(out, ACT_BTE)


class TransformerLayer(nn.Module):
    """One Transformer layer: self-attention and FFN sub-layers, each with dropout + residual.

    pre_ln=False (BERT, post-LN): x = LN(x + Drop(MHA(x))); x = LN(x + Drop(FFN(x))).
    pre_ln=True  (GPT-2, pre-LN): x = x + Drop(MHA(LN(x))); x = x + Drop(FFN(LN(x))).
    Sub-modules: attention, attention_layer_norm, mlp, mlp_layer_norm.

    Arguments are positional so that `nn.remat(TransformerLayer, static_argnums=(3,))` can mark
    `deterministic` static (argument 0 is self).
    """

    cfg: ModelConfig
    pre_ln: bool = False
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: attention.AttentionMask | Array | None,
        deterministic: bool,
        decode_lengths: Array | None = None,
    ) -> Array:
        cfg = self.cfg

        def norm(name: str) -> LayerNorm:
            return LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.params_dtype, name=name)

        def drop(y: Array) -> Array:
            return Dropout(cfg.hidden_dropout)(y, deterministic=deterministic)

        attention = MultiHeadAttention(cfg, decode=self.decode, name="attention")
        mlp = FeedForward(cfg, decode=self.decode, name="mlp")
        if self.pre_ln:
            h = norm("attention_layer_norm")(x)
            x = x + drop(attention(h, mask, deterministic, decode_lengths))
            x = x + drop(mlp(norm("mlp_layer_norm")(x)))
        else:
            x = norm("attention_layer_norm")(
                x + drop(attention(x, mask, deterministic, decode_lengths))
            )
            x = norm("mlp_layer_norm")(x + drop(mlp(x)))
        return nn.with_logical_constraint(x, ACT_BTE)


def layer_class(cfg: ModelConfig) -> type[TransformerLayer]:
    """TransformerLayer, wrapped in nn.remat with the config's policy unless remat == "none"."""
    if cfg.remat == "none":
        return TransformerLayer
    return nn.remat(TransformerLayer, policy=remat_policy(cfg.remat), static_argnums=(3,))
