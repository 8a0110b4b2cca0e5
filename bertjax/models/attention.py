"""Attention cores: softmax(Q K^T / sqrt(d_k) + mask) V in its several implementations.

`attend` picks one per call from `ModelConfig.attention_impl` and `ModelConfig.kernels`:

* reference: the formula in plain einsums (`reference_attention`), with dropout on the
  probabilities; what "reference" forces, and what a GPU/TPU trains with when
  attention_dropout > 0 (the fused kernels there have no dropout);
* XLA / cuDNN: `jax.nn.dot_product_attention` (`fused_attention`): cuDNN flash attention on a
  CUDA GPU for bf16/fp16 inputs it supports, XLA's implementation elsewhere;
* the CPU core (`cpu_attention`): a `custom_vjp` whose forward and backward matmuls are all in
  XLA:CPU's canonical layout (`bertjax/kernels/cpu_bf16.py`), with the dropout mask on the
  probabilities drawn once and kept for the backward pass. On a CPU ("auto" kernels) it runs
  bf16 attention, and every attention with dropout: autodiff of the reference formula
  recomputes and transposes more there (see benchmarks/RESULTS.md, fine-tuning speed);
* `cached_attention`: new queries over a decoder's KV cache (`layers.MultiHeadAttention`).

Masks: `AttentionMask` (structured: padding, segments, causal) or a dense boolean
[B|1, 1, T, S] array (True = may attend).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
from absl import logging

from bertjax import kernels as kernel_sets
from bertjax.kernels.cpu_bf16 import materialized_transpose
from bertjax.models import dropout as dropout_lib

Array = jax.Array


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
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask | Array | None,
    impl: str,
    kernels: str = "auto",
) -> Array:
    """softmax(Q K^T / sqrt(d)) V through `jax.nn.dot_product_attention`; q,k,v: [B, T, N, D].

    impl "cudnn": cuDNN flash attention (GPU, bf16/fp16; errors otherwise); "auto": cuDNN
    when `cudnn_unsupported_reason` finds nothing against it, else `cpu_attention` where the
    kernels take canonical matmuls (bf16 on a CPU), else XLA's; "xla": XLA's attention (the einsum
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
        if impl == "auto" and kernel_sets.canonical_matmuls(kernels, q.dtype):
            return cpu_attention(q, k, v, dense_mask(mask, q.shape[1]))
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


_BTND_TO_BNTD = (0, 2, 1, 3)  # [B, T, N, D] <-> [B, N, T, D] (its own inverse)


def _batched_dot_f32(a: Array, b: Array) -> Array:
    """a[B, N, T, K] @ b[B, N, K, S] per (B, N), accumulated and returned in float32."""
    return jnp.einsum("bntk,bnks->bnts", a, b, preferred_element_type=jnp.float32)


def _attention_probs(q: Array, kt: Array, mask: Array | None) -> Array:
    """softmax(q kt / sqrt(d) masked) in float32; q [B,N,T,D], kt [B,N,D,S]."""
    scores = _batched_dot_f32(q, kt) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def _drop(probs: Array, keep: Array | None, scale: float) -> Array:
    return probs if keep is None else jnp.where(keep, probs * scale, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _canonical_attention(
    q: Array, k: Array, v: Array, mask: Array | None, keep: Array | None, scale: float
) -> Array:
    return _canonical_attention_fwd(q, k, v, mask, keep, scale)[0]


def _canonical_attention_fwd(
    q: Array, k: Array, v: Array, mask: Array | None, keep: Array | None, scale: float
) -> tuple[Array, tuple]:
    qh = materialized_transpose(q, _BTND_TO_BNTD)
    kh = materialized_transpose(k, _BTND_TO_BNTD)
    vh = materialized_transpose(v, _BTND_TO_BNTD)
    probs = _attention_probs(qh, materialized_transpose(kh), mask)  # float32, kept for the vjp
    dropped = _drop(probs, keep, scale).astype(q.dtype)
    out = _batched_dot_f32(dropped, vh).astype(q.dtype)
    return materialized_transpose(out, _BTND_TO_BNTD), (qh, kh, vh, probs, mask, keep)


def _canonical_attention_bwd(scale: float, residuals: tuple, g: Array) -> tuple:
    qh, kh, vh, probs, mask, keep = residuals
    gh = materialized_transpose(g.astype(qh.dtype), _BTND_TO_BNTD)  # [B, N, T, D]
    dropped = _drop(probs, keep, scale).astype(qh.dtype)
    # d(out)/d(dropped probs), then through the dropout (the same mask, the same scale)
    dprobs = _drop(_batched_dot_f32(gh, materialized_transpose(vh)), keep, scale)  # [B,N,T,S]
    dv = _batched_dot_f32(materialized_transpose(dropped), gh)  # [B, N, S, D]
    dscores = probs * (dprobs - jnp.sum(dprobs * probs, axis=-1, keepdims=True))
    if mask is not None:
        # A masked score is a constant: no gradient. (Where a row has a key left, its masked
        # probabilities are 0 anyway; a row with every key masked has uniform probabilities,
        # which depend on neither q nor k.)
        dscores = jnp.where(mask, dscores, 0.0)
    dscores = (dscores * (qh.shape[-1] ** -0.5)).astype(qh.dtype)
    dq = _batched_dot_f32(dscores, kh)
    dk = _batched_dot_f32(materialized_transpose(dscores), qh)
    grads = zip((dq, dk, dv), (qh.dtype, kh.dtype, vh.dtype), strict=True)
    back = [materialized_transpose(d.astype(dtype), _BTND_TO_BNTD) for d, dtype in grads]
    return (*back, None, None)  # boolean masks have no cotangent


_canonical_attention.defvjp(_canonical_attention_fwd, _canonical_attention_bwd)


def cpu_attention(
    q: Array, k: Array, v: Array, mask: Array | None, keep: Array | None = None, scale: float = 1.0
) -> Array:
    """softmax(Q K^T / sqrt(d), masked) V, every matmul canonical; q,k,v [B, T, N, D].

    `mask`: boolean, broadcastable to [B, N, T, S] (True = may attend), or None. `keep`: the
    dropout mask of the probabilities [B, N, T, S] (kept ones are multiplied by `scale`), or
    None. Scores and softmax in float32, the probabilities rounded to the compute dtype before
    the PV matmul, as `jax.nn.dot_product_attention`'s XLA implementation.
    """
    return _canonical_attention(q, k, v, mask, keep, scale)


def attend(
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask | Array | None,
    *,
    impl: str = "auto",
    kernels: str = "auto",
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> Array:
    """Attention of q over k, v ([B, T, N, D]) with dropout on the probabilities when
    `dropout_rng` is given and `dropout_rate` > 0 (training); see the module docstring for
    which implementation runs."""
    if dropout_rng is None or dropout_rate == 0.0:
        if impl == "reference":
            return reference_attention(q, k, v, dense_mask(mask, q.shape[1]))
        return fused_attention(q, k, v, mask, impl, kernels)
    shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])  # [B, N, T, S]
    keep, scale = dropout_lib.keep_mask(dropout_rng, shape, dropout_rate)
    if impl != "reference" and kernel_sets.resolve(kernels) == "cpu_bf16":
        return cpu_attention(q, k, v, dense_mask(mask, q.shape[1]), keep, scale)
    # The fused kernels have no dropout on the probabilities: the reference formula.
    drop = None if keep is None else functools.partial(dropout_lib.apply_keep, keep, scale)
    return reference_attention(q, k, v, dense_mask(mask, q.shape[1]), dropout=drop)
