"""GPT-2 byte-level BPE through the `tokenizers` library (Rust speed).

Two ways to get one: load GPT-2's own files (`vocab.json` + `merges.txt`, or a Hugging Face
`tokenizer.json`), or train a fresh vocabulary on a corpus. Either way `<|endoftext|>` is a special
token: it separates documents in packed training data and stops generation.

    tok = ByteBPETokenizer.train(texts, vocab_size=4096)
    ids = tok.encode("Hello world")          # np.int32 array
    tok.decode(ids) == "Hello world"         # byte-level BPE is lossless
    tok.save(directory)                      # vocab.json, merges.txt, tokenizer.json
    tok = ByteBPETokenizer.from_dir(directory)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers.implementations import ByteLevelBPETokenizer

EOT_TOKEN = "<|endoftext|>"


class ByteBPETokenizer:
    """A byte-level BPE tokenizer with GPT-2's pre-tokenizer and an end-of-text token."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, eot_token: str = EOT_TOKEN):
        eot_id = tokenizer.token_to_id(eot_token)
        if eot_id is None:
            raise ValueError(
                f"the tokenizer has no end-of-text token {eot_token!r}; GPT-2 packing and "
                "generation need it (add it to the vocabulary or pass eot_token=...)"
            )
        self.tokenizer = tokenizer
        self.eot_token = eot_token
        self.eot_id = int(eot_id)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_files(
        cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike
    ) -> ByteBPETokenizer:
        """GPT-2's `vocab.json` + `merges.txt` (e.g. from a Hugging Face gpt2 directory)."""
        vocab_file, merges_file = os.fspath(vocab_file), os.fspath(merges_file)
        for path in (vocab_file, merges_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"BPE tokenizer file not found: {path}")
        _check_bpe_files(vocab_file, merges_file)  # the Rust loader panics without saying where
        wrapper = ByteLevelBPETokenizer.from_file(vocab_file, merges_file)
        tokenizer = wrapper._tokenizer
        # GPT-2's vocab.json holds <|endoftext|> as an ordinary entry (id 50256); registering it
        # as special keeps its id and stops the pre-tokenizer from splitting it in raw text.
        if tokenizer.token_to_id(EOT_TOKEN) is None:
            logging.warning(
                "%s has no %s token; adding it with id %d (the model needs a vocab_size above it)",
                vocab_file,
                EOT_TOKEN,
                tokenizer.get_vocab_size(),
            )
        tokenizer.add_special_tokens([EOT_TOKEN])
        return cls(tokenizer)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> ByteBPETokenizer:
        """`tokenizer.json` if the directory has one, else `vocab.json` + `merges.txt`."""
        directory = os.fspath(directory)
        tok_json = os.path.join(directory, "tokenizer.json")
        if os.path.isfile(tok_json):
            return cls(tokenizers.Tokenizer.from_file(tok_json))
        vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        if os.path.isfile(vocab) and os.path.isfile(merges):
            return cls.from_files(vocab, merges)
        raise FileNotFoundError(
            f"no GPT-2 tokenizer in {directory}: expected tokenizer.json or vocab.json + merges.txt"
        )

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2
    ) -> ByteBPETokenizer:
        """Trains a byte-level BPE vocabulary (256 byte symbols + merges + end-of-text)."""
        if vocab_size < 257:
            raise ValueError(f"vocab_size={vocab_size}: byte-level BPE needs at least 257")
        wrapper = ByteLevelBPETokenizer()
        wrapper.train_from_iterator(
            texts,
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=False,
            special_tokens=[EOT_TOKEN],
        )
        return cls(wrapper._tokenizer)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `vocab.json` + `merges.txt` (GPT-2's layout) and `tokenizer.json`."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.model.save(directory)  # vocab.json, merges.txt
        self.tokenizer.save(os.path.join(directory, "tokenizer.json"))
        # What transformers' AutoTokenizer needs to load this directory as a GPT-2 tokenizer.
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(
                {
                    "tokenizer_class": "GPT2Tokenizer",
                    "bos_token": self.eot_token,
                    "eos_token": self.eot_token,
                    "unk_token": self.eot_token,
                    "model_max_length": 1024,
                },
                f,
                indent=2,
            )

    # -- use ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` (int32); `<|endoftext|>` in the text becomes the special id."""
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of many texts, tokenized in parallel by the Rust library."""
        encodings = self.tokenizer.encode_batch(list(texts))
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def _check_bpe_files(vocab_file: str, merges_file: str) -> None:
    """Raises a ValueError naming the file and line of a malformed vocab.json / merges.txt."""
    try:
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{vocab_file}: not a JSON vocabulary ({e})") from e
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()
    ):
        raise ValueError(f"{vocab_file}: expected a JSON object mapping token strings to int ids")
    with open(merges_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or (line_no == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{merges_file}:{line_no}: expected two tokens, got {line!r}")
            for token in (*parts, parts[0] + parts[1]):
                if token not in vocab:
                    raise ValueError(
                        f"{merges_file}:{line_no}: merge {line!r} uses {token!r}, "
                        f"which is not in {vocab_file}"
                    )
