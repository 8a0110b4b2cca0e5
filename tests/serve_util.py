"""Helpers for the serving tests: a tiny random bertjax classifier and a loopback server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import jax
import numpy as np
import uvicorn
from flax.core import meta

from bertjax import models
from bertjax.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer
from bertjax.serve.app import ServerSettings, create_app
from bertjax.serve.backend import EncoderBackend

WORDS = (
    "the a movie film is was good bad great terrible not very fun boring plot actor "
    "acting story it this that and but of to in with funny sad long short best worst"
).split()
_PIECES = [c for c in "abcdefghijklmnopqrstuvwxyz.,!?'" if c not in WORDS]
VOCAB = [*SPECIAL_TOKENS, *WORDS, *_PIECES, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]


def tiny_tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer(VOCAB, do_lower_case=True)


def tiny_classifier(num_labels: int = 3, max_positions: int = 64, seed: int = 0):
    """(model config, module, params) of a 1-layer random BERT classifier (compiles fast)."""
    cfg = models.get_config(
        "tiny",
        head="classification",
        num_labels=num_labels,
        vocab_size=len(VOCAB),
        max_position_embeddings=max_positions,
        num_layers=1,
        hidden_size=64,
        intermediate_size=128,
    )
    module = models.build(cfg)
    params = jax.jit(module.init)(jax.random.key(seed), models.example_batch(cfg))["params"]
    # Plain arrays, as a checkpoint holds them (init boxes them with their logical axes).
    return cfg, module, jax.device_get(meta.unbox(params))


def tiny_backend(num_labels: int = 3, max_seq_length: int = 64, **kw) -> EncoderBackend:
    cfg, module, params = tiny_classifier(num_labels, max_seq_length)
    return EncoderBackend(
        module,
        params,
        cfg,
        tiny_tokenizer(),
        max_seq_length=max_seq_length,
        label_names=[f"class_{i}" for i in range(num_labels)] if num_labels > 1 else None,
        **kw,
    )


def model_alone(backend: EncoderBackend, row) -> dict[str, np.ndarray]:
    """`model.apply` on one row alone (batch of 1, no padding, no attention mask): what the
    server must answer for it, whatever batch, bucket or packed row it lands in."""
    batch = {"input_ids": row.input_ids[None], "token_type_ids": row.token_type_ids[None]}
    out = jax.jit(backend.module.apply)({"params": backend.params}, batch)
    hidden = np.asarray(out["hidden_states"][0])
    return {
        "logits": np.asarray(out["logits"][0]),
        "pooled": np.asarray(out["pooled"][0]),
        "cls": hidden[0],
        "mean": hidden.mean(axis=0),
    }


def random_text(rng: np.random.Generator, max_words: int) -> str:
    n = int(rng.integers(1, max_words + 1))
    return " ".join(rng.choice(WORDS, size=n))


@contextlib.contextmanager
def running_server(app, *, ready_timeout: float = 120.0):
    """Serves `app` on 127.0.0.1 at an ephemeral port; yields the base URL once /health is 200.

    The server is always shut down (graceful, then forced) when the block exits.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=10, timeout_keep_alive=75
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise TimeoutError(f"the server at {url} did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()


def small_settings(**overrides) -> ServerSettings:
    values = dict(max_batch_tokens=512, max_batch_size=16, max_client_batch_size=16)
    values.update(overrides)
    return ServerSettings(**values)


def tiny_app(**overrides):
    return create_app(tiny_backend(), small_settings(**overrides))


# -- run directories of other tasks (written as training would, without training) ------------

LM_TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    "A dog ran in the park with a red ball.",
    "Once upon a time there was a small town by the sea.",
    "The import statement loads a module into the program.",
    "She said that the weather was cold, but the sun was out.",
    "Numbers like 42 and 7 appear in the story twice.",
]


def _write_run(workdir, params, manifest) -> None:
    from bertjax import checkpointing
    from bertjax.inference import manifest as manifest_lib

    manifest_lib.write_manifest(workdir, {
        "format_version": 1, "problem_type": None, "label_names": None, "data": {},
        "best_metric": "eval/loss", "init_from": "", **manifest,
    })  # fmt: skip
    best = checkpointing.BestCheckpointer(workdir, "eval/loss", "min")
    best.maybe_save(1, params, {"eval/loss": 1.0})
    best.close()


def write_gpt_run(workdir, *, max_positions: int = 64, seed: int = 0):
    """A causal_lm run directory: a trained byte-level BPE (~300 tokens) and a random 2-layer
    GPT with large weights (initializer_range 0.3), so that greedy paths are not flat. Tokens
    that are not printable on their own (stray bytes of UTF-8 characters) get zero embeddings:
    their logits are 0 where the best of the others is far above, so the text is readable."""
    from bertjax.data.bpe import ByteBPETokenizer
    from bertjax.inference import manifest as manifest_lib

    tokenizer = ByteBPETokenizer.train(LM_TEXTS * 4, vocab_size=300)
    cfg = models.get_config(
        "gpt_tiny", vocab_size=tokenizer.vocab_size, hidden_size=64, num_heads=2, num_layers=2,
        intermediate_size=128, max_position_embeddings=max_positions, initializer_range=0.3,
    )  # fmt: skip
    module = models.build(cfg)
    batch = {"input_ids": np.zeros((1, 8), np.int32)}
    params = jax.device_get(meta.unbox(jax.jit(module.init)(jax.random.key(seed), batch)["params"]))
    table = np.array(params["word_embeddings"]["embedding"])
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode([i])
        if i != tokenizer.eot_id and not (text.isascii() and text.isprintable() and text):
            table[i] = 0.0
    params["word_embeddings"]["embedding"] = table
    entry = manifest_lib.save_tokenizer(workdir, tokenizer)
    _write_run(workdir, params, {"task": "causal_lm", "model": cfg.to_dict(),
                                 "tokenizer": entry, "max_seq_length": max_positions})  # fmt: skip
    return workdir


def write_span_run(workdir, task: str, *, max_seq_length: int, label_names=None, data=None,
                   seed: int = 0):  # fmt: skip
    """A squad (question_answering) or ner (token_classification) run directory of a random
    1-layer BERT with the tiny WordPiece vocabulary."""
    head = {"squad": "question_answering", "ner": "token_classification"}[task]
    cfg = models.get_config(
        "tiny", head=head, num_labels=len(label_names) if label_names else 2,
        vocab_size=len(VOCAB), max_position_embeddings=64, num_layers=1, hidden_size=64,
        intermediate_size=128, initializer_range=0.2,
    )  # fmt: skip
    module = models.build(cfg)
    params = jax.device_get(
        meta.unbox(jax.jit(module.init)(jax.random.key(seed), models.example_batch(cfg))["params"])
    )
    (workdir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    _write_run(workdir, params, {
        "task": task, "model": cfg.to_dict(), "label_names": label_names, "data": data or {},
        "tokenizer": {"type": "wordpiece", "vocab_file": "vocab.txt", "do_lower_case": True},
        "max_seq_length": max_seq_length,
    })  # fmt: skip
    return workdir
