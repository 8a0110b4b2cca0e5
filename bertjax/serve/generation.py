"""The GPT side of the server: prompts, limits, compiled decoding and one generation at a time
per step on a single model thread.

`GenerationBackend` holds a GPT module, its prepared parameters, its byte-level BPE tokenizer
and a `StepDecoder` compiled for every prompt width up to `max_prompt_tokens` and a cache of
`max_prompt_tokens` (rounded up to 8) + `max_new_tokens` slots. `session(...)` starts one
generation; `GenerationSession.advance` produces its next token (the prefill first), on the
`GenerationWorker`'s thread. Concurrent generations take turns token by token on that thread,
so none waits for another to finish, and one whose client has gone simply stops being advanced.

Prompts start with <|endoftext|>, as every training document does (`bertjax.generate_cli`'s
default). Banned words are tokenized as given and with a leading space (how a word inside a
text is tokenized by GPT-2's BPE), each a banned token sequence.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

from bertjax.generate import prepare_params
from bertjax.serve.decoder import BannedTable, DecoderShapes, Sampling, StepDecoder
from bertjax.serve.textstream import TextStream

T = TypeVar("T")


class PromptTooLong(ValueError):
    """A prompt of more tokens than the server's `max_prompt_tokens`."""


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """One request's settings, validated (`GenerationBackend.options`)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    banned: tuple[tuple[int, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, the text it releases, and why the generation ended (None
    while it goes on). The end-of-text token is an event with an empty text."""

    token_id: int
    text: str
    finish_reason: str | None = None


class GenerationSession:
    """One generation, advanced a token at a time (on the worker thread)."""

    def __init__(self, backend: GenerationBackend, prompt: np.ndarray, options: GenerateOptions):
        self.backend = backend
        self.prompt = prompt
        self.options = options
        self.sampling = Sampling.make(
            seed=options.seed, temperature=options.temperature, top_k=options.top_k,
            top_p=options.top_p,
        )  # fmt: skip
        shapes = backend.decoder.shapes
        self.table = BannedTable.make(options.banned, shapes.banned_rows, shapes.banned_tokens)
        self.tokens: list[int] = []  # every new token, end of text included
        self.text = TextStream(
            lambda ids: backend.tokenizer.decode(ids, skip_special_tokens=True), options.stop
        )
        self.finish_reason: str | None = None
        self._cache: Any = None
        self.inference_s = 0.0

    def advance(self) -> TokenEvent:
        """Runs the prefill or one decode step; returns the new token's event."""
        if self.finish_reason is not None:
            raise RuntimeError("the generation has finished")
        started = time.perf_counter()
        decoder = self.backend.decoder
        if self._cache is None:
            token, self._cache = decoder.prefill(
                self.prompt, self.sampling, self.table, self.backend.pad_id
            )
        else:
            context = [*self.prompt.tolist(), *self.tokens]
            token, self._cache = decoder.step(
                self._cache, self.tokens[-1], len(self.tokens), self.sampling, self.table, context
            )
        self.inference_s += time.perf_counter() - started
        self.tokens.append(token)
        self.backend.count_token()
        if token == self.backend.eos_id:
            return self._end(token, self.text.finish(), "eos")
        delta = self.text.push(token)
        if self.text.stopped:
            return self._end(token, delta, "stop")
        if len(self.tokens) >= self.options.max_new_tokens:
            return self._end(token, delta + self.text.finish(), "length")
        return TokenEvent(token, delta)

    def _end(self, token: int, text: str, reason: str) -> TokenEvent:
        self.finish_reason = reason
        self.close()
        return TokenEvent(token, text, reason)

    def close(self) -> None:
        """Frees the KV cache (a finished or abandoned generation)."""
        self._cache = None

    def result(self) -> dict[str, Any]:
        """The response of a finished generation."""
        ids = self.tokens[:-1] if self.finish_reason == "eos" else self.tokens
        return {
            "generated_text": self.text.text,
            "finish_reason": self.finish_reason,
            "generated_tokens": len(self.tokens),
            "prompt_tokens": len(self.prompt),
            "token_ids": ids,
            "seed": self.options.seed,
        }


class GenerationBackend:
    """A GPT run ready to compile its decoding shapes and generate.

    Args:
      module: the GPT module (`bertjax.models.build(model_config)`).
      params: its parameters (training layout, as a checkpoint holds them).
      model_config: its `ModelConfig` (model_type "gpt2").
      tokenizer: a `ByteBPETokenizer` (encode, decode, eot_id).
      max_new_tokens: the most tokens a request may ask for.
      max_prompt_tokens: the longest prompt, <|endoftext|> included (default: up to 256, what
        the model's positions leave after max_new_tokens).
      banned_words / banned_word_tokens: the most banned words per request and tokens per word.
      name: how /info names the model.
    """

    kind = "generate"

    def __init__(
        self,
        module: Any,
        params: Any,
        model_config: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        max_prompt_tokens: int | None = None,
        banned_words: int = 16,
        banned_word_tokens: int = 8,
        name: str = "",
    ):
        if model_config.model_type != "gpt2":
            raise ValueError(f"GenerationBackend serves GPT runs; got {model_config.model_type!r}")
        positions = model_config.max_position_embeddings
        if max_prompt_tokens is None:
            max_prompt_tokens = min(256, positions - max_new_tokens)
        if max_new_tokens < 1 or max_prompt_tokens < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} and max_prompt_tokens={max_prompt_tokens} "
                "must be >= 1"
            )
        if max_prompt_tokens + max_new_tokens > positions:
            raise ValueError(
                f"max_prompt_tokens={max_prompt_tokens} + max_new_tokens={max_new_tokens} "
                f"exceeds the model's max_position_embeddings={positions}"
            )
        self.module = module
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eot_id)
        self.pad_id = self.eos_id  # `generate`'s default padding
        self.max_banned_words = banned_words
        self.name = name
        shapes = DecoderShapes(
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            banned_rows=2 * banned_words,  # each word as given and with a leading space
            banned_tokens=banned_word_tokens,
        )
        self.decoder = StepDecoder(module, prepare_params(module, jax.device_put(params)), shapes)
        self.tokens_generated = 0  # every token produced (tests watch it stop on a disconnect)
        self._count_lock = threading.Lock()

    @property
    def max_new_tokens(self) -> int:
        return self.decoder.shapes.max_new_tokens

    @property
    def max_prompt_tokens(self) -> int:
        return self.decoder.shapes.max_prompt_tokens

    def count_token(self) -> None:
        with self._count_lock:
            self.tokens_generated += 1

    # -- requests -------------------------------------------------------------------------------

    def encode_prompt(self, text: str) -> np.ndarray:
        """<|endoftext|> + the prompt's tokens (PromptTooLong beyond max_prompt_tokens)."""
        ids = np.concatenate([[self.eos_id], self.tokenizer.encode(text)]).astype(np.int32)
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(
                f"prompt: {len(ids)} tokens with <|endoftext|>, more than the limit of "
                f"{self.max_prompt_tokens}"
            )
        return ids

    def banned_sequences(self, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        """The token sequences of banned words (ValueError naming the word's index)."""
        if len(words) > self.max_banned_words:
            raise ValueError(
                f"banned_words: {len(words)} words; the limit is {self.max_banned_words}"
            )
        limit = self.decoder.shapes.banned_tokens
        sequences: dict[tuple[int, ...], None] = {}
        for i, word in enumerate(words):
            if not word.strip():
                raise ValueError(f"banned_words[{i}]: an empty word")
            for variant in dict.fromkeys([word, word if word[0].isspace() else " " + word]):
                ids = tuple(int(t) for t in self.tokenizer.encode(variant))
                if len(ids) > limit:
                    raise ValueError(
                        f"banned_words[{i}]: {variant!r} is {len(ids)} tokens; the limit is {limit}"
                    )
                sequences[ids] = None
        return tuple(sequences)

    def session(self, prompt: np.ndarray, options: GenerateOptions) -> GenerationSession:
        """A generation of `prompt` (from `encode_prompt`), not started yet."""
        if not 1 <= options.max_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"max_new_tokens: {options.max_new_tokens} is outside 1..{self.max_new_tokens}"
            )
        if options.top_k > self.model_config.vocab_size:
            raise ValueError(
                f"top_k: {options.top_k} exceeds the vocabulary ({self.model_config.vocab_size})"
            )
        return GenerationSession(self, prompt, options)

    # -- start-up -------------------------------------------------------------------------------

    def compile(self, workers: int | None = None) -> int:
        """Compiles every prefill width and the decode step; returns how many were compiled."""
        return self.decoder.compile(workers)

    def warm_up(self) -> None:
        """Runs every compiled prefill once, and the step (first runs pay one-off costs)."""
        options = GenerateOptions(max_new_tokens=2, temperature=0.0)
        for width in self.decoder.shapes.prompt_widths:
            prompt = np.full(width, self.eos_id, np.int32)
            session = self.session(prompt, options)
            while session.finish_reason is None:
                session.advance()

    def info(self) -> dict[str, Any]:
        """What /info reports about the model."""
        cfg = self.model_config
        return {
            "name": self.name,
            "task": "causal_lm",
            "model_type": cfg.model_type,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "vocab_size": cfg.vocab_size,
            "dtype": cfg.dtype,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_new_tokens": self.max_new_tokens,
            "max_banned_words": self.max_banned_words,
            "max_banned_word_tokens": self.decoder.shapes.banned_tokens,
            "prompt_widths": list(self.decoder.shapes.prompt_widths),
            "cache_length": self.decoder.shapes.cache_length,
        }


class GenerationWorker:
    """The one model thread generation steps run on, in the order they are asked for."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.active = 0  # generations in progress

    def start(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bertjax-gpt")

    async def stop(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, wait=True)
            self._pool = None

    async def run(self, fn: Callable[[], T]) -> tuple[T, float]:
        """fn() on the model thread; returns its result and how long it waited for the thread."""
        if self._pool is None:
            raise RuntimeError("the generation worker is not running")
        submitted = time.perf_counter()
        started: list[float] = []

        def timed() -> T:
            started.append(time.perf_counter())
            return fn()

        result = await asyncio.get_running_loop().run_in_executor(self._pool, timed)
        return result, started[0] - submitted
