"""Transformer building blocks shared by BERT (post-LN encoder) and GPT (pre-LN decoder).

Written from the formulas of "Attention Is All You Need" (Vaswani et al. 2017):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V
    MultiHead(x)       = Concat(head_1, ..., head_h) W^O
    head_i             = Attention(x W_i^Q, x W_i^K, x W_i^V)
    FFN(x)             = act(x W_1 + b_1) W_2 + b_2
    LayerNorm(x)       = (x - mean) / sqrt(var + eps) * gamma + beta

Every parameter names its logical axes (`nn.with_logical_partitioning`) and the main activations
carry `nn.with_logical_constraint`, so `bertjax/sharding.py` can map them onto any mesh. Parameters
are stored in `param_dtype`; matmuls run in `dtype`; LayerNorm statistics, softmax and logits are
float32 whatever `dtype` is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from bertjax.models import matmul
from bertjax.models.config import ModelConfig

Array = jax.Array

# Logical activation axis names (see docs/architecture.md).
ACT_BTE = ("act_batch", "act_length", "act_embed")
ACT_BTNK = ("act_batch", "act_length", "act_heads", "act_kv")
ACT_BTM = ("act_batch", "act_length", "act_mlp")


# On a CPU the two GELUs are computed in float32 whatever x's dtype: there jax.nn.gelu in bf16
# is 2.5-3.5x slower (forward and gradient; 6% of the bert_cpu train step), and the erf form is
# faster than jax's erfc form in float32 too. On accelerators jax.nn.gelu, which XLA fuses in
# the compute dtype (float32 intermediates there would double the GELU's saved activations).
def _gelu_erf(x: Array) -> Array:
    """BERT's exact GELU, x Phi(x) = x/2 (1 + erf(x / sqrt 2)) (Hugging Face BERT's formula)."""
    if jax.default_backend() != "cpu":
        return jax.nn.gelu(x, approximate=False)
    x32 = x.astype(jnp.float32)
    return (x32 * 0.5 * (1.0 + lax.erf(x32 * (1 / math.sqrt(2))))).astype(x.dtype)


def _gelu_tanh(x: Array) -> Array:
    """GPT-2's "gelu_new": x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if jax.default_backend() != "cpu":
        return jax.nn.gelu(x, approximate=True)
    x32 = x.astype(jnp.float32)
    inner = math.sqrt(2 / math.pi) * (x32 + 0.044715 * x32**3)
    return (0.5 * x32 * (1.0 + jnp.tanh(inner))).astype(x.dtype)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": _gelu_erf,  # BERT
    "gelu_new": _gelu_tanh,  # GPT-2
    "relu": jax.nn.relu,
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


def kernel_init(cfg: ModelConfig, names: tuple[str, ...]) -> nn.initializers.Initializer:
    """BERT's initializer (truncated normal, std = initializer_range) with logical axis names."""
    base = nn.initializers.truncated_normal(stddev=cfg.initializer_range)

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
    `matmul.linear` (which keeps bf16 matmuls on XLA:CPU's fast path)."""

    cfg: ModelConfig
    features: tuple[int, ...]
    names: tuple[str, ...]  # logical axes of the kernel: inputs then outputs
    axis: tuple[int, ...] = (-1,)
    # The decode layout: the kernel stored as a 2-D [out, in] matrix (`to_decode_layout` makes
    # it from the training layout), which the few rows of a decode step multiply fastest.
    transposed: bool = False

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
            init = nn.initializers.truncated_normal(stddev=cfg.initializer_range)
            kernel_t = self.param("kernel", init, (n, k), cfg.params_dtype)
            bias = self.param("bias", nn.initializers.zeros, self.features, cfg.params_dtype)
            y = matmul.linear_decode(x, kernel_t, bias.reshape(n), cfg.compute_dtype)
            return y.reshape(*y.shape[:-1], *self.features)
        kernel = self.param(
            "kernel", kernel_init(cfg, self.names), in_shape + self.features, cfg.params_dtype
        )
        bias = self.param(
            "bias", zeros_init(self.names[len(in_shape) :]), self.features, cfg.params_dtype
        )
        y = matmul.linear(x, kernel.reshape(k, n), bias.reshape(n), cfg.compute_dtype)
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
    name: str,
) -> Dense:
    """A Dense (kernel + bias) whose kernel axes are `names` (inputs then outputs)."""
    return Dense(
        cfg,
        features=(features,) if isinstance(features, int) else tuple(features),
        names=names,
        axis=(axis,) if isinstance(axis, int) else tuple(axis),
        transposed=transposed,
        name=name,
    )


class Dropout(nn.Module):
    """Inverted dropout (the "dropout" RNG stream); identity when `deterministic` or rate 0.

    As `nn.Dropout`, but each element's coin is 16 random bits (two per 32-bit word of the
    generator) compared with round(rate * 2^16): half the threefry work, 3.1 instead of 6.9 ms
    per 1M-element mask on a 2-core Xeon, +5% on the bert_cpu train step. The drop probability
    is then round(rate * 2^16) / 2^16 (0.1 -> 0.100006), and the kept elements are scaled by
    the inverse of the exact keep probability, so the expectation is unchanged.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = min(round(self.rate * 2**16), 2**16)
        if threshold == 0:  # a rate under 2^-17 drops nothing at 16-bit resolution
            return x
        if threshold == 2**16:
            return jnp.zeros_like(x)
        n = x.shape[-1]
        words = jax.random.bits(self.make_rng("dropout"), (*x.shape[:-1], (n + 1) // 2))
        low, high = words & 0xFFFF, words >> 16
        keep = jnp.concatenate([low >= threshold, high >= threshold], axis=-1)[..., :n]
        return jnp.where(keep, x / (1.0 - threshold / 2**16), 0).astype(x.dtype)


@jax.custom_vjp
def add_bias(x: Array, bias: Array) -> Array:
    """x + bias over the last axis, whose gradient for `bias` is a matmul with ones.

    Autodiff would sum the incoming gradient over the leading axes with a reduce; for the MLM
    bias ([B*P, 30522] -> [30522]) XLA:CPU's column reduction takes ~140 ms where the same sum
    as a matmul takes ~6 ms (measured on this project's 2-core Xeon, jax 0.10.2); on GPU and
    TPU the two cost about the same.
    """
    return x + bias.astype(x.dtype)


def _add_bias_fwd(x: Array, bias: Array) -> tuple[Array, Array]:
    return add_bias(x, bias), bias


def _add_bias_bwd(bias: Array, g: Array) -> tuple[Array, Array]:
    rows = g.reshape(-1, g.shape[-1])
    dbias = jnp.ones((rows.shape[0],), rows.dtype) @ rows
    return g, dbias.astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


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


def make_attention_mask(
    query_length: int,
    key_padding: Array | None = None,
    *,
    causal: bool = False,
    segment_ids: Array | None = None,
) -> Array | None:
    """A boolean attention mask [B or 1, 1, Tq, Tk]: True where a query may attend a key.

    key_padding: [B, Tk], 1/True = real token (the HF `attention_mask`). Only KEYS are masked:
      padded query rows still get (meaningless) outputs, exactly as in the HF reference.
    causal: query t sees keys s <= t (self-attention, Tq == Tk).
    segment_ids: [B, T] for packed sequences; tokens attend only within their own segment id.
    Returns None when nothing is masked.
    """
    masks = []
    if key_padding is not None:
        masks.append(key_padding.astype(bool)[:, None, None, :])
    if causal:
        t = jnp.arange(query_length)
        masks.append((t[None, :] <= t[:, None])[None, None])
    if segment_ids is not None:
        masks.append(segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    if not masks:
        return None
    mask = masks[0]
    for m in masks[1:]:
        mask = jnp.logical_and(mask, m)
    return mask


@flax.struct.dataclass
class AttentionMask:
    """What may attend to what, kept structured so that fused kernels can skip masked blocks.

    key_padding: [B, S], 1/True = real token (HF `attention_mask`); only keys are masked.
    segment_ids: [B, T] for packed rows; attention stays within equal ids.
    causal: query t sees keys s <= t.

    `dense(T)` is the boolean [B or 1, 1, T, S] mask of `make_attention_mask` (XLA and reference
    paths). The cuDNN path instead passes `causal` as is_causal, the padding as per-row key
    lengths (rows must then be right-padded, as every bertjax pipeline makes them) and only the
    segment mask, when there is one, as a dense mask.
    """

    key_padding: Array | None = None
    segment_ids: Array | None = None
    causal: bool = flax.struct.field(pytree_node=False, default=False)

    def dense(self, query_length: int) -> Array | None:
        return make_attention_mask(
            query_length, self.key_padding, causal=self.causal, segment_ids=self.segment_ids
        )


def dense_mask(mask: AttentionMask | Array | None, query_length: int) -> Array | None:
    """A boolean [B|1, 1, T, S] mask (or None) from either form of mask."""
    if isinstance(mask, AttentionMask):
        return mask.dense(query_length)
    return mask


@functools.cache
def _cudnn_available() -> bool:
    """Whether jax can run cuDNN fused attention here (a CUDA GPU backend with cuDNN)."""
    if jax.default_backend() != "gpu":
        return False
    try:  # jax's own check (a private module: if it moved, trust the CUDA plugin's cuDNN)
        from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

        check = cudnn_attention.check_cudnn_version
    except (ImportError, AttributeError):
        return True
    try:
        check()
    except Exception as e:  # no cuDNN (e.g. a ROCm backend)
        logging.warning("cuDNN fused attention unavailable (%s); using the XLA attention", e)
        return False
    return True


def cudnn_unsupported_reason(q: Array, k: Array, has_dense_mask: bool) -> str | None:
    """Why cuDNN flash attention cannot take these inputs, or None when it can.

    Mirrors jax's own checks (jax/_src/cudnn/fused_attention_stablehlo.py,
    check_is_flash_attention), so that "auto" never picks cuDNN for a shape that would fail
    at compile time: bf16/fp16 inputs, head dim a multiple of 8 and <= 128, and even sequence
    lengths when a mask has to be passed as a bias.
    """
    if not _cudnn_available():
        return "no CUDA GPU with cuDNN"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"compute dtype {q.dtype} (cuDNN needs bfloat16 or float16)"
    head_dim = q.shape[-1]
    if head_dim % 8 or head_dim > 128:
        return f"head dim {head_dim} (cuDNN needs a multiple of 8, <= 128)"
    if has_dense_mask and (q.shape[1] % 2 or k.shape[1] % 2):
        return f"odd sequence lengths {q.shape[1]}, {k.shape[1]} with a mask bias"
    return None


def fused_attention(
    q: Array, k: Array, v: Array, mask: AttentionMask | Array | None, impl: str
) -> Array:
    """softmax(Q K^T / sqrt(d)) V through `jax.nn.dot_product_attention`; q,k,v: [B, T, N, D].

    impl "cudnn": cuDNN flash attention (GPU, bf16/fp16; errors otherwise); "auto": cuDNN
    when `cudnn_unsupported_reason` finds nothing against it, else `matmul.attention` for bf16
    on a CPU (XLA:CPU's fast bf16 layout), else XLA's; "xla": XLA's attention (the einsum
    formula, compiled for any platform).
    """
    structured = isinstance(mask, AttentionMask)
    has_dense = (mask is not None and not structured) or (
        structured and mask.segment_ids is not None
    )
    use_cudnn = impl == "cudnn"
    if impl == "auto":
        reason = cudnn_unsupported_reason(q, k, has_dense)
        use_cudnn = reason is None
        if reason is not None and _cudnn_available():
            logging.log_first_n(logging.WARNING, "attention: not cuDNN because of %s", 1, reason)
    if not use_cudnn:
        if impl == "auto" and matmul.use_canonical_matmuls(q.dtype):
            return matmul.attention(q, k, v, dense_mask(mask, q.shape[1]))
        return jax.nn.dot_product_attention(
            q, k, v, mask=dense_mask(mask, q.shape[1]), implementation="xla"
        )
    if not structured:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    kv_lengths = None
    if mask.key_padding is not None:
        # Per-row key lengths; exact for right-padded rows (every bertjax pipeline's layout).
        kv_lengths = jnp.sum(mask.key_padding.astype(jnp.int32), axis=-1)
    segment = None
    if mask.segment_ids is not None:
        segment = AttentionMask(segment_ids=mask.segment_ids).dense(q.shape[1])
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=segment,
        is_causal=mask.causal,
        key_value_seq_lengths=kv_lengths,
        implementation="cudnn",
    )


def reference_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    *,
    dropout: Callable[[Array], Array] | None = None,
    return_probs: bool = False,
) -> Array | tuple[Array, Array]:
    """softmax(Q K^T / sqrt(d_k)) V with the mask, in plain einsums; q,k,v: [B, T, N, D].

    Scores and softmax are float32; attention-probability dropout (BERT's
    attention_probs_dropout_prob) is applied when `dropout` is given. return_probs: also
    return the attention probabilities [B, N, T, S] (float32, before dropout).
    """
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    scores = jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        # A large finite negative (not -inf) keeps fully masked rows finite, as in the HF model.
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    kept = probs
    if dropout is not None:
        probs = dropout(probs)
    out = jnp.einsum("bnts,bsnd->btnd", probs.astype(v.dtype), v)
    return (out, kept) if return_probs else out


def cached_attention(q: Array, keys: Array, values: Array, mask: Array) -> Array:
    """Attention of new queries q [B, L, N, D] over a KV cache keys/values [B, N, S, D].

    mask [B, 1, L, S]: True where query i of row b may see cache slot s. Returns [B, L, N, D].
    """
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    scores = jnp.einsum("btnd,bnsd->bnts", q, keys, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bnts,bnsd->btnd", probs.astype(values.dtype), values)


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
        mask: AttentionMask | Array | None,
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
            out = cached_attention(q, keys, values, cache_mask)
        elif cfg.attention_impl == "reference" or (not deterministic and cfg.attention_dropout > 0):
            # The fused kernels have no dropout on the attention probabilities: training with
            # attention_dropout > 0 always takes this (slower, memory-hungrier) path.
            use_dropout = not deterministic and cfg.attention_dropout > 0
            drop = None
            if use_dropout:
                drop = functools.partial(Dropout(cfg.attention_dropout), deterministic=False)
            out, probs = reference_attention(
                q, k, v, dense_mask(mask, q.shape[1]), dropout=drop, return_probs=True
            )
            # Kept only when the caller makes "intermediates" mutable (bertjax.explain runs the
            # model with attention_impl="reference" to read every layer's and head's maps).
            self.sow("intermediates", "attention_probs", probs)
        else:
            out = fused_attention(q, k, v, mask, cfg.attention_impl)
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
        dtype = self.cfg.compute_dtype
        if jax.default_backend() == "cpu":
            # XLA:CPU computes a bf16 attention-over-cache product (a batched matrix-vector
            # product) on float32 copies of its operands: a bf16 cache would be converted
            # whole, in every layer at every step (~40 of a 75 ms GPT-2 step at batch 32).
            dtype = jnp.float32
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
        h = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](h), ACT_BTM)
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
        mask: AttentionMask | Array | None,
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
