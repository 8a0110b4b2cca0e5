"""KV-cache text generation for causal LMs (GPT-2).

    from bertjax.generate import generate
    out = generate(model, params, [[464, 2068], [40]], max_new_tokens=20,
                   temperature=0.0, eos_id=50256)          # greedy; a list of two arrays

How it runs: the prompts are right-padded into one [B, T] block (T rounded up to a multiple of 8,
so nearby prompt lengths share a compilation) and the whole prompt block is run once ("prefill"),
which writes every layer's keys/values into a KV cache; the slots of a row's padding are marked
invalid and never attended, and each row's positions count its real tokens only. Then a
`jax.lax.while_loop` runs one token per iteration for all rows (all writing the same cache slot,
T, T + 1, ...), feeding each sampled token back, until `max_new_tokens` or until every row has
produced `eos_id`. A step reads the whole cache, so the cache starts at T + max(32, T) slots and
doubles when full (`_cache_lengths`, one loop per size) up to T + max_new_tokens, rather than
being read at its final size from the first step. The prefill and the loops are one jitted
function: it compiles once per (batch size, padded prompt length, max_new_tokens, sampling
mode), never per token. The parameters are cast to the compute dtype and put in the decode
layout (`prepare_params`) before the loop; to generate many times from the same weights,
prepare them once and pass the `DecodeParams` instead:

    prepared = prepare_params(model, params)       # e.g. float32 -> bfloat16, kernels [out, in]
    out = generate(model, prepared, prompts, max_new_tokens=20)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertjax.models import layers

Array = jax.Array

_PROMPT_BUCKET = 8  # prompt blocks are padded to a multiple of this many tokens


def generate(
    model: nn.Module,
    params: Any | DecodeParams,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: Array | int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Continues each prompt by up to `max_new_tokens` tokens; returns prompt + new tokens.

    params: the model's parameters, or `prepare_params(model, params)` (skips that step).
    prompt_ids: one prompt (a 1-D sequence of ids), a list of prompts of any lengths, or a 2-D
      array [B, T] of prompts that all have T real tokens.
    temperature: 0.0 is greedy (argmax); otherwise logits are divided by it before sampling.
    top_k: if > 0, sample only among the k most likely tokens.
    top_p: if < 1, sample only from the smallest set of most likely tokens whose probability
      mass reaches top_p (nucleus sampling; the most likely token is always kept).
    rng: a jax PRNG key or an int seed (default 0); unused when greedy.
    eos_id: a row stops after generating this id (it is included in the output).
    pad_id: fills the slots after a row's end in the 2-D output (default: eos_id, else 0).

    Returns the same form as the input: a 1-D array for one prompt, a list of 1-D arrays (each
    its prompt + its new tokens, ending at eos_id when produced) for a list of prompts, and a
    [B, T + max_new_tokens] array (pad_id after eos) for a 2-D array.
    """
    prompts, form = _as_prompt_list(prompt_ids)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    cfg = model.cfg
    if top_k < 0 or top_k > cfg.vocab_size:
        raise ValueError(f"top_k={top_k} must be in [0, vocab_size={cfg.vocab_size}]")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.max() + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"longest prompt ({lengths.max()} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
            f"the model's max_position_embeddings ({cfg.max_position_embeddings})"
        )
    for i, p in enumerate(prompts):
        if p.size and (p.min() < 0 or p.max() >= cfg.vocab_size):
            raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0

    width = -(-int(lengths.max()) // _PROMPT_BUCKET) * _PROMPT_BUCKET
    block = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        block[i, : len(p)] = p
    if rng is None:
        rng = 0
    if isinstance(rng, int):
        rng = jax.random.key(rng)

    if not isinstance(params, DecodeParams):
        params = prepare_params(model, params)
    elif params.cfg != cfg:
        changed = [
            f
            for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(params.cfg, f.name)
        ]
        raise ValueError(
            "params were prepared for another model config ("
            + ", ".join(
                f"{f.name}={getattr(params.cfg, f.name)!r}, not {getattr(cfg, f.name)!r}"
                for f in changed
            )
            + "): prepare_params(model, params) with this model"
        )
    new_tokens, num_new = _generate_block(
        model,
        params.tree,
        jnp.asarray(block),
        jnp.asarray(lengths),
        rng,
        jnp.float32(max(temperature, 1e-6)),
        jnp.float32(top_p),
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0.0,
        top_k=int(top_k),
        use_top_p=top_p < 1.0,
        eos_id=-1 if eos_id is None else int(eos_id),
        pad_id=int(pad_id),
    )
    new_tokens, num_new = np.asarray(new_tokens), np.asarray(num_new)
    if form == "array":
        return np.concatenate([np.stack(prompts), new_tokens], axis=1)
    rows = [np.concatenate([p, new_tokens[i, : num_new[i]]]) for i, p in enumerate(prompts)]
    return rows[0] if form == "single" else rows


def _as_prompt_list(prompt_ids: Any) -> tuple[list[np.ndarray], str]:
    """(list of 1-D int32 prompts, input form: "single" | "list" | "array")."""
    if isinstance(prompt_ids, np.ndarray | jax.Array):
        arr = np.asarray(prompt_ids)
        if arr.ndim == 1:
            prompts, form = [arr], "single"
        elif arr.ndim == 2:
            prompts, form = list(arr), "array"
        else:
            raise ValueError(f"prompt_ids has shape {arr.shape}; expected [T] or [B, T]")
    elif len(prompt_ids) and all(np.isscalar(x) for x in prompt_ids):
        prompts, form = [np.asarray(prompt_ids)], "single"
    else:
        prompts, form = [np.asarray(p) for p in prompt_ids], "list"
    if not prompts:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    out = []
    for i, p in enumerate(prompts):
        if p.ndim != 1 or p.size == 0 or not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"prompt {i} must be a non-empty 1-D sequence of integer token ids")
        out.append(p.astype(np.int32))
    return out, form


def decode_params(model: nn.Module, params: Any) -> Any:
    """`params` of `model` in the layout its decode mode reads (`layers.to_decode_layout`).

    Use with `model.clone(decode=True).apply({"params": decode_params(model, params), ...})`;
    `generate` does this itself.
    """
    return layers.to_decode_layout(params, _decode_variable_shapes(model, 1, 1)["params"])


def _decode_variable_shapes(model: nn.Module, batch_size: int, max_length: int) -> Any:
    """The shapes of `model.clone(decode=True).init`'s variables ("params" in the decode layout,
    "cache" of `max_length` slots per row), from shapes alone: nothing is initialised."""
    return jax.eval_shape(
        model.clone(decode=True).init,
        jax.random.key(0),
        {"input_ids": jnp.zeros((batch_size, max_length), jnp.int32)},
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeParams:
    """Parameters ready for `generate`: in the compute dtype and the decode layout."""

    tree: Any
    cfg: Any = dataclasses.field(metadata=dict(static=True))  # the ModelConfig they are for


def prepare_params(model: nn.Module, params: Any) -> DecodeParams:
    """`params` cast to the model's compute dtype and put in the decode layout, for `generate`."""
    return DecodeParams(_prepare_tree(model, params), cfg=model.cfg)


@functools.partial(jax.jit, static_argnums=0)
def _prepare_tree(model: nn.Module, params: Any) -> Any:
    compute = model.cfg.compute_dtype
    params = jax.tree.map(  # (unboxed: logical-partitioning boxes would hide the leaves)
        lambda p: p.astype(compute) if jnp.issubdtype(p.dtype, jnp.floating) else p,
        nn.meta.unbox(params),
    )
    return decode_params(model, params)


def init_cache(model: nn.Module, batch_size: int, max_length: int) -> Any:
    """An empty KV cache ("cache" collection) of `max_length` slots for each of `batch_size` rows.

    Built from shapes alone (`jax.eval_shape`): no parameter is initialised. Use it with
    `model.clone(decode=True).apply({"params": decode_params(model, p), "cache": cache}, batch,
    mutable=["cache"])`.
    """
    shapes = _decode_variable_shapes(model, batch_size, max_length)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def first_argmax(logits: Array, block: int = 1024) -> Array:
    """`jnp.argmax(logits, axis=-1)` for [B, V] float logits: the first maximum of each row.

    In two levels: the maximum of each block of `block` logits (one pass over the logits),
    then the first block that holds the row's maximum, then the first maximum inside that one
    block. XLA:CPU's argmax is one variadic reduction that takes 3-6 ms over GPT-2's 32 x
    50,257 logits; this ~1.1-1.3 ms (a plain max alone: 0.8 ms). A row with a NaN gets an
    unspecified index (XLA:CPU's max may skip NaNs).
    """
    batch, vocab = logits.shape
    # Vocabulary-major: a decode step's head computes E h^T, [V, B] (see kernels.tied_logits),
    # and XLA cancels this transpose against the head's; reading [B, V] rows instead would
    # transpose 32 x 50,257 floats (4 ms).
    by_vocab = logits.T
    full = vocab // block
    maxima = [jnp.max(by_vocab[: full * block].reshape(full, block, batch), axis=1)]
    if full * block < vocab:
        maxima.append(jnp.max(by_vocab[full * block :], axis=0, keepdims=True))
    best_block = jnp.argmax(jnp.concatenate(maxima, axis=0), axis=0)  # [B]: the first with the max
    width = min(block, vocab)
    start = jnp.minimum(best_block * block, vocab - width)
    rows = start[None, :] + jnp.arange(width)[:, None]  # [width, B]
    chunk = jnp.take_along_axis(by_vocab, rows, axis=0)
    return (start + jnp.argmax(chunk, axis=0)).astype(jnp.int32)


def sample_logits(
    logits: Array,
    rng: Array,
    temperature: Array | float,
    *,
    greedy: bool | Array = False,
    top_k: int | Array = 0,
    top_p: Array | float = 1.0,
    use_top_p: bool | Array = False,
    banned: Array | None = None,
) -> Array:
    """One token id per row from float32 logits [B, V] (see `generate` for the arguments).

    `greedy`, `top_k` and `use_top_p` are Python values (each setting its own compilation, as
    `generate` uses them) or traced arrays (one compilation serves every setting, as the server
    needs; both branches are computed and one selected, so the tokens are the same).
    banned: optional bool [B, V]; True tokens are never produced (their logits set to the
    float32 minimum before top-k / top-p, as Hugging Face's bad-words processor does).
    """
    neg_inf = jnp.finfo(jnp.float32).min

    def ban(x: Array) -> Array:
        return x if banned is None else jnp.where(banned, neg_inf, x)

    if isinstance(greedy, bool) and greedy:
        return first_argmax(ban(logits))
    raw = logits
    logits = ban(logits.astype(jnp.float32) / temperature)
    if isinstance(top_k, int):
        if top_k > 0:
            kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
            logits = jnp.where(logits < kth_largest, neg_inf, logits)
    else:  # a traced k: the k-th largest of the sorted row (the same value lax.top_k gives)
        descending = jnp.sort(logits, axis=-1)[:, ::-1]
        k = jnp.clip(top_k, 1, logits.shape[-1]) - 1
        kth_largest = jax.lax.dynamic_slice_in_dim(descending, k, 1, axis=1)
        logits = jnp.where(jnp.logical_and(top_k > 0, logits < kth_largest), neg_inf, logits)
    if not (isinstance(use_top_p, bool) and not use_top_p):
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        keep = mass_before < top_p  # the first token always has mass_before 0
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        nucleus = jnp.where(logits < threshold, neg_inf, logits)
        logits = nucleus if isinstance(use_top_p, bool) else jnp.where(use_top_p, nucleus, logits)
    sampled = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    if isinstance(greedy, bool):
        return sampled
    return jnp.where(greedy, first_argmax(ban(raw)), sampled)


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "max_new_tokens",
        "greedy",
        "top_k",
        "use_top_p",
        "eos_id",
        "pad_id",
    ),
)
def _generate_block(
    model: nn.Module,
    params: Any,
    block: Array,
    lengths: Array,
    rng: Array,
    temperature: Array,
    top_p: Array,
    *,
    max_new_tokens: int,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
    eos_id: int,
    pad_id: int,
) -> tuple[Array, Array]:
    """Prefill + while_loop decode. Returns new tokens [B, max_new_tokens] and their counts [B].

    `params`: the tree of `prepare_params` (compute dtype, decode layout).
    """
    batch, width = block.shape
    decoder = model.clone(decode=True)
    cache_lengths = _cache_lengths(width, max_new_tokens)
    cache = init_cache(model, batch, cache_lengths[0])
    sample = functools.partial(
        sample_logits,
        temperature=temperature,
        greedy=greedy,
        top_k=top_k,
        top_p=top_p,
        use_top_p=use_top_p,
    )

    out, mutated = decoder.apply(
        {"params": params, "cache": cache},
        {"input_ids": block},
        decode_lengths=lengths,
        logits_positions=(lengths - 1)[:, None],
        mutable=["cache"],
    )
    token = sample(out["logits"][:, 0], jax.random.fold_in(rng, 0))
    done = token == eos_id
    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    num_new = jnp.ones((batch,), jnp.int32)

    def cond(state: tuple, end: int) -> Array:
        step, _, _, _, done, _ = state
        return jnp.logical_and(step < end, jnp.logical_not(jnp.all(done)))

    def body(state: tuple) -> tuple:
        step, cache, token, tokens, done, num_new = state
        out, mutated = decoder.apply(
            {"params": params, "cache": cache},
            {"input_ids": token[:, None]},
            mutable=["cache"],
        )
        token = sample(out["logits"][:, -1], jax.random.fold_in(rng, step))
        token = jnp.where(done, pad_id, token)  # finished rows emit padding
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        num_new = num_new + jnp.logical_not(done).astype(jnp.int32)
        done = jnp.logical_or(done, token == eos_id)
        return step + 1, mutated["cache"], token, tokens, done, num_new

    state = (jnp.int32(1), mutated["cache"], token, tokens, done, num_new)
    for length in cache_lengths:
        # Step s writes slot width + s - 1: a cache of `length` slots serves steps up to
        # length - width; a loop per cache length, each compiled for its own cache shape.
        step, cache, *rest = state
        state = (step, layers.grow_cache(cache, length), *rest)
        end = min(max_new_tokens, length - width + 1)
        state = jax.lax.while_loop(functools.partial(cond, end=end), body, state)
    _, _, _, tokens, _, num_new = state
    return tokens, num_new


def _cache_lengths(width: int, max_new_tokens: int) -> list[int]:
    """The KV-cache sizes a generation goes through: doubling, from the prompt block plus at
    least 32 slots to the block plus `max_new_tokens`.

    A decode step reads the whole cache (on a CPU, GPT-2's float32 cache at batch 32 is 19 MB
    per layer at 96 slots, and reading it is half of a step); growing it as it fills keeps the
    slots read within 2x of those filled, for a compiled loop per size (at most ~6 for a 1024-
    position model).
    """
    final = width + max_new_tokens
    lengths = [min(final, width + max(32, width))]
    while lengths[-1] < final:
        lengths.append(min(final, 2 * lengths[-1]))
    return lengths
