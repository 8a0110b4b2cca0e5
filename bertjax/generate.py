"""KV-cache text generation for causal LMs (GPT-2).

    from bertjax.generate import generate
    out = generate(model, params, [[464, 2068], [40]], max_new_tokens=20,
                   temperature=0.0, eos_id=50256)          # greedy; a list of two arrays

How it runs: the prompts are right-padded into one [B, T] block (T rounded up to a multiple of 8,
so nearby prompt lengths share a compilation) and the whole prompt block is run once ("prefill"),
which writes every layer's keys/values into a cache of T + max_new_tokens slots; each row's cache
index advances by its own prompt length, so a row's next token overwrites its first padding slot
and padding is never attended. Then a `jax.lax.while_loop` runs one token per iteration for all
rows, feeding each sampled token back, until `max_new_tokens` or until every row has produced
`eos_id`. The prefill and the loop are one jitted function: it compiles once per
(batch size, padded prompt length, max_new_tokens, sampling mode), never per token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_PROMPT_BUCKET = 8  # prompt blocks are padded to a multiple of this many tokens


def generate(
    model: nn.Module,
    params: Any,
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

    new_tokens, num_new = _generate_block(
        model,
        params,
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


def init_cache(model: nn.Module, batch_size: int, max_length: int) -> Any:
    """An empty KV cache ("cache" collection) of `max_length` slots for each of `batch_size` rows.

    Built from shapes alone (`jax.eval_shape`): no parameter is initialised. Use it with
    `model.clone(decode=True).apply({"params": p, "cache": cache}, batch, mutable=["cache"])`.
    """
    shapes = jax.eval_shape(
        model.clone(decode=True).init,
        jax.random.key(0),
        {"input_ids": jnp.zeros((batch_size, max_length), jnp.int32)},
    )["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample_logits(
    logits: Array,
    rng: Array,
    temperature: Array | float,
    *,
    greedy: bool = False,
    top_k: int = 0,
    top_p: Array | float = 1.0,
    use_top_p: bool = False,
) -> Array:
    """One token id per row from float32 logits [B, V] (see `generate` for the arguments)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    neg_inf = jnp.finfo(jnp.float32).min
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, neg_inf, logits)
    if use_top_p:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        keep = mass_before < top_p  # the first token always has mass_before 0
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg_inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


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
    """Prefill + while_loop decode. Returns new tokens [B, max_new_tokens] and their counts [B]."""
    batch, width = block.shape
    decoder = model.clone(decode=True)
    compute = model.cfg.compute_dtype
    if compute != model.cfg.params_dtype:
        # Cast once here, not inside every decode step (e.g. float32 params, bfloat16 compute).
        params = jax.tree.map(
            lambda p: p.astype(compute) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
        )
    cache = init_cache(model, batch, width + max_new_tokens)
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

    def cond(state: tuple) -> Array:
        step, _, _, _, done, _ = state
        return jnp.logical_and(step < max_new_tokens, jnp.logical_not(jnp.all(done)))

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
    _, _, _, tokens, _, num_new = jax.lax.while_loop(cond, body, state)
    return tokens, num_new
