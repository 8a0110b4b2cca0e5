"""Step-wise GPT decoding for the server: a compiled prefill per prompt width and one compiled
one-token step, so tokens can be streamed as they come and no request ever compiles.

`bertjax.generate.generate` runs a whole generation in one jitted while_loop; a server needs the
tokens one by one (streaming, stop strings, a client that leaves), with every shape compiled
before the first request. `StepDecoder` splits the same computation in two:

* `prefill(prompt)`: the prompt right-padded to a multiple of 8 (`generate`'s block width) is
  run once into an empty KV cache of `cache_length` slots, and the first token is sampled
  with `fold_in(key(seed), 0)`;
* `step(cache, token, s)`: one token through the cache, sampled with `fold_in(key(seed), s)`.

That is `generate`'s own prefill, loop body and sampler (`sample_logits`), so a generation gives
the same tokens as `generate(..., rng=seed)` for the same prompt, seed and settings
(tests/test_serve_generate.py checks greedy and sampled). The cache has one fixed size (the
longest prompt width + the max_new_tokens limit) where `generate` grows it: the extra slots are
never valid, so they are never attended.

The sampling settings are arrays, not compile-time constants (`sample_logits` with traced
greedy / top_k / use_top_p), and banned words are fixed-size padded tables, so one executable
per shape serves every request. Banned words follow Hugging Face's `bad_words_ids`: the last
token of a banned sequence is masked when the tokens before it end the sequence so far.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.generate import _PROMPT_BUCKET, DecodeParams, init_cache, sample_logits

Array = jax.Array


class Sampling(NamedTuple):
    """Per-request sampling settings as arrays (one compilation serves them all)."""

    seed: np.ndarray  # int32 ()
    temperature: np.ndarray  # float32 (): max(temperature, 1e-6), as `generate` passes it
    top_p: np.ndarray  # float32 ()
    top_k: np.ndarray  # int32 (): 0 = off
    greedy: np.ndarray  # bool ()
    use_top_p: np.ndarray  # bool ()

    @classmethod
    def make(cls, *, seed: int, temperature: float, top_k: int, top_p: float) -> Sampling:
        return cls(
            seed=np.asarray(seed, np.int32),
            temperature=np.asarray(max(temperature, 1e-6), np.float32),
            top_p=np.asarray(top_p, np.float32),
            top_k=np.asarray(top_k, np.int32),
            greedy=np.asarray(temperature == 0.0),
            use_top_p=np.asarray(top_p < 1.0),
        )


class BannedTable(NamedTuple):
    """Banned token sequences, padded to a fixed [S, K] (K = the longest sequence - 1).

    prefixes: the tokens before each sequence's last, right-aligned; prefix_valid: which of
    the K columns belong to the prefix; last: each sequence's last token; active: real rows.
    """

    prefixes: np.ndarray  # int32 [S, K]
    prefix_valid: np.ndarray  # bool [S, K]
    last: np.ndarray  # int32 [S]
    active: np.ndarray  # bool [S]

    @classmethod
    def make(cls, sequences: Sequence[Sequence[int]], rows: int, max_tokens: int) -> BannedTable:
        """The table of `sequences` (ValueError when more than `rows` or one is too long)."""
        width = max_tokens - 1
        if len(sequences) > rows:
            raise ValueError(f"{len(sequences)} banned token sequences; the limit is {rows}")
        table = cls(
            np.zeros((rows, width), np.int32),
            np.zeros((rows, width), bool),
            np.zeros(rows, np.int32),
            np.zeros(rows, bool),
        )
        for i, seq in enumerate(sequences):
            if not 1 <= len(seq) <= max_tokens:
                raise ValueError(f"a banned sequence of {len(seq)} tokens (limit {max_tokens})")
            prefix = list(seq[:-1])
            if prefix:
                table.prefixes[i, width - len(prefix) :] = prefix
                table.prefix_valid[i, width - len(prefix) :] = True
            table.last[i] = seq[-1]
            table.active[i] = True
        return table


def tail_of(ids: Sequence[int], width: int) -> np.ndarray:
    """The last `width` ids, right-aligned, -1 before the start (never a token)."""
    tail = np.full(width, -1, np.int32)
    if width:
        last = list(ids[-width:])
        tail[width - len(last) :] = last
    return tail


def banned_mask(vocab_size: int, table: BannedTable, tail: Array) -> Array:
    """bool [1, V]: the tokens that would complete a banned sequence after `tail`."""
    same = jnp.logical_or(jnp.logical_not(table.prefix_valid), table.prefixes == tail[None, :])
    match = jnp.logical_and(jnp.all(same, axis=1), table.active)
    hits = jnp.zeros((vocab_size,), jnp.int32).at[table.last].max(match.astype(jnp.int32))
    return (hits > 0)[None, :]


def _sample(model: Any, logits: Array, key: Array, sampling: Sampling, table: BannedTable,
            tail: Array) -> Array:  # fmt: skip
    return sample_logits(
        logits,
        key,
        sampling.temperature,
        greedy=sampling.greedy,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        use_top_p=sampling.use_top_p,
        banned=banned_mask(model.cfg.vocab_size, table, tail),
    )


def _prefill(model: Any, cache_length: int, params: Any, block: Array, length: Array,
             sampling: Sampling, table: BannedTable, tail: Array) -> tuple[Array, Any]:  # fmt: skip
    """`_generate_block`'s prefill for one prompt: (first token [1], the filled cache)."""
    cache = init_cache(model, 1, cache_length)
    out, mutated = model.clone(decode=True).apply(
        {"params": params, "cache": cache},
        {"input_ids": block},
        decode_lengths=length,
        logits_positions=(length - 1)[:, None],
        mutable=["cache"],
    )
    key = jax.random.fold_in(jax.random.key(sampling.seed), 0)
    return _sample(model, out["logits"][:, 0], key, sampling, table, tail), mutated["cache"]


def _step(model: Any, params: Any, cache: Any, token: Array, step: Array, sampling: Sampling,
          table: BannedTable, tail: Array) -> tuple[Array, Any]:  # fmt: skip
    """`_generate_block`'s loop body for one row: (the next token [1], the cache)."""
    out, mutated = model.clone(decode=True).apply(
        {"params": params, "cache": cache}, {"input_ids": token[:, None]}, mutable=["cache"]
    )
    key = jax.random.fold_in(jax.random.key(sampling.seed), step)
    return _sample(model, out["logits"][:, -1], key, sampling, table, tail), mutated["cache"]


@dataclasses.dataclass(frozen=True)
class DecoderShapes:
    """Every shape the decoder runs: prompt widths (multiples of 8), one cache, one table."""

    max_prompt_tokens: int
    max_new_tokens: int
    banned_rows: int = 32
    banned_tokens: int = 8

    @property
    def prompt_widths(self) -> tuple[int, ...]:
        top = -(-self.max_prompt_tokens // _PROMPT_BUCKET) * _PROMPT_BUCKET
        return tuple(range(_PROMPT_BUCKET, top + 1, _PROMPT_BUCKET))

    @property
    def cache_length(self) -> int:
        return self.prompt_widths[-1] + self.max_new_tokens

    def width_for(self, prompt_length: int) -> int:
        """`generate`'s block width for a prompt: its length rounded up to a multiple of 8."""
        return -(-prompt_length // _PROMPT_BUCKET) * _PROMPT_BUCKET


class StepDecoder:
    """A GPT model's prefill (per prompt width) and decode step, compiled ahead of time.

    Args:
      model: the GPT module (`models.build(cfg)`, not in decode mode).
      params: `prepare_params(model, params)`.
      shapes: the limits that decide every compiled shape.
    """

    def __init__(self, model: Any, params: DecodeParams, shapes: DecoderShapes):
        if shapes.banned_tokens < 2:
            raise ValueError("banned_tokens must be >= 2")
        self.model = model
        self.params = params.tree
        self.shapes = shapes
        self._prefill: dict[int, Any] = {}
        self._step: Any = None

    def _specs(self) -> tuple[Any, ...]:
        s = self.shapes
        scalar = jax.ShapeDtypeStruct

        def spec(x: np.ndarray) -> Any:
            return scalar(x.shape, x.dtype)

        sampling = Sampling(*map(spec, Sampling.make(seed=0, temperature=1.0, top_k=0, top_p=1.0)))
        table = BannedTable(*map(spec, BannedTable.make([], s.banned_rows, s.banned_tokens)))
        tail = scalar((s.banned_tokens - 1,), np.int32)
        params = jax.tree.map(lambda x: scalar(x.shape, x.dtype), self.params)
        return params, sampling, table, tail

    def compile(self, workers: int | None = None) -> int:
        """Compiles the prefill of every prompt width and the step (jax's persistent
        compilation cache, when configured, serves those seen before); returns how many."""
        s = self.shapes
        params, sampling, table, tail = self._specs()
        prefill = jax.jit(functools.partial(_prefill, self.model, s.cache_length))
        step = jax.jit(functools.partial(_step, self.model), donate_argnums=(1,))
        cache = jax.eval_shape(lambda: init_cache(self.model, 1, s.cache_length))
        one = jax.ShapeDtypeStruct((1,), np.int32)

        def compile_prefill(width: int) -> Any:
            block = jax.ShapeDtypeStruct((1, width), np.int32)
            return prefill.lower(params, block, one, sampling, table, tail).compile()

        def compile_step() -> Any:
            scalar = jax.ShapeDtypeStruct((), np.int32)
            return step.lower(params, cache, one, scalar, sampling, table, tail).compile()

        todo = [w for w in s.prompt_widths if w not in self._prefill]
        workers = workers or min(4, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            step_future = pool.submit(compile_step) if self._step is None else None
            for width, compiled in zip(todo, pool.map(compile_prefill, todo), strict=True):
                self._prefill[width] = compiled
            if step_future is not None:
                self._step = step_future.result()
        return len(todo) + (step_future is not None)

    @property
    def compiled(self) -> bool:
        return self._step is not None and len(self._prefill) == len(self.shapes.prompt_widths)

    def prefill(self, prompt: np.ndarray, sampling: Sampling, table: BannedTable,
                pad_id: int) -> tuple[int, Any]:  # fmt: skip
        """(first new token, cache) of a prompt of at most max_prompt_tokens ids."""
        n = len(prompt)
        if not 1 <= n <= self.shapes.max_prompt_tokens:
            raise ValueError(f"a prompt of {n} tokens (1..{self.shapes.max_prompt_tokens})")
        width = self.shapes.width_for(n)
        block = np.full((1, width), pad_id, np.int32)
        block[0, :n] = prompt
        compiled = self._prefill[width]  # a KeyError here is a bug: never compile on a request
        tail = tail_of(prompt.tolist(), self.shapes.banned_tokens - 1)
        token, cache = compiled(
            self.params, block, np.asarray([n], np.int32), sampling, table, tail
        )
        return int(jax.device_get(token)[0]), cache

    def step(self, cache: Any, token: int, step: int, sampling: Sampling, table: BannedTable,
             context: Sequence[int]) -> tuple[int, Any]:  # fmt: skip
        """(the token after `token`, the cache); `step` counts the new tokens so far and
        `context` is the whole sequence (prompt + new tokens, `token` last)."""
        tail = tail_of(context, self.shapes.banned_tokens - 1)
        token, cache = self._step(
            self.params, cache, np.asarray([token], np.int32), np.asarray(step, np.int32),
            sampling, table, tail,
        )  # fmt: skip
        return int(jax.device_get(token)[0]), cache
