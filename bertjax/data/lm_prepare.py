r"""Offline tokenization for causal-LM corpora too big to tokenize at start-up.

    python -m bertjax.data.lm_prepare --config=configs/gpt2_small_lm.py \
        --config.data.source=tfds --config.data.tfds_name=lm1b --output_dir=/data/lm1b_gpt2

Reads the configured source in chunks (a TFDS dataset, local files, or the embedded corpus),
cleans it as the online path does, tokenizes each chunk with the configured GPT-2 vocabulary
(`data.vocab_file` + `data.merges_file`; the Rust tokenizer uses every core) and appends the
tokens to two flat files, nanoGPT-style:

    OUTPUT_DIR/train.bin, eval.bin   <eot> doc <eot> doc ... as uint16 (uint32 if vocab > 65536)
    OUTPUT_DIR/meta.json             dtype, token counts, vocabulary size, cleaning counts
    OUTPUT_DIR/tokenizer/            the tokenizer, so the run and generation use the same one

Train with `--config.data.source=prepared --config.data.prepared_dir=OUTPUT_DIR`: every host
memory-maps the files and reads only the rows of its share of each batch, so the corpus never
has to fit in memory. Eval documents are chosen by a hash of their text, as online.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bertjax.data import lm, sources
from bertjax.data.bpe import ByteBPETokenizer
from bertjax.data.cleaning import CleaningStats, Document, clean_documents

log = logging.getLogger(__name__)

_TFDS_CHUNK = 50_000  # examples read per chunk (bounds memory)
_ENCODE_CHUNK = 10_000  # documents tokenized per call


def _raw_documents(settings: lm.LMDataSettings, stats: CleaningStats) -> Iterator[Document]:
    """The source's documents, read a chunk (a file, a slice of a TFDS split) at a time."""
    if settings.source == "embedded":
        from bertjax.data.embedded_corpus import embedded_documents

        yield from (list(d) for d in embedded_documents())
    elif settings.source == "text_files":
        for path in sources.expand_text_files(settings.text_files):
            yield from sources.read_text_file(
                path,
                text_format=settings.text_format,
                unicode_errors=settings.unicode_errors,
                stats=stats,
            )
    elif settings.source == "tfds":
        import tensorflow_datasets as tfds

        size = len(
            tfds.data_source(
                settings.tfds_name,
                split=settings.tfds_split,
                data_dir=settings.tfds_data_dir or None,
                download=False,
            )
        )
        chunks = max(1, -(-size // _TFDS_CHUNK))
        for k in range(chunks):  # strided slices k::chunks, read by the online path's reader
            yield from sources.tfds_documents(
                settings.tfds_name,
                split=settings.tfds_split,
                data_dir=settings.tfds_data_dir or None,
                text_key=settings.tfds_text_key,
                unicode_errors=settings.unicode_errors,
                process_index=k,
                process_count=chunks,
                stats=stats,
            )
            log.info("read TFDS chunk %d/%d", k + 1, chunks)
    else:
        raise ValueError(f"data.source={settings.source!r} cannot be prepared (already is?)")


def prepare(settings: lm.LMDataSettings, output_dir: str) -> dict:
    """Writes train.bin / eval.bin / meta.json / tokenizer/ to output_dir; returns the metadata."""
    if not settings.vocab_file:
        raise ValueError(
            "lm_prepare needs data.vocab_file + data.merges_file (GPT-2's vocab.json/merges.txt, "
            "or those of a vocabulary trained beforehand)"
        )
    tokenizer = ByteBPETokenizer.from_files(settings.vocab_file, settings.merges_file)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    os.makedirs(output_dir, exist_ok=True)
    tokenizer.save(os.path.join(output_dir, "tokenizer"))
    stats = CleaningStats()
    docs = clean_documents(
        _raw_documents(settings, stats),
        min_document_chars=settings.min_document_chars,
        dedup_documents=settings.dedup_documents,
        stats=stats,
    )
    counts = {"train": 0, "eval": 0}
    documents = {"train": 0, "eval": 0}
    files = {
        split: open(os.path.join(output_dir, f"{split}.bin"), "wb") for split in ("train", "eval")
    }
    try:
        chunk: list[str] = []

        def flush() -> None:
            token_docs = tokenizer.encode_batch(chunk)
            for split in ("train", "eval"):
                keep = [
                    ids
                    for text, ids in zip(chunk, token_docs, strict=True)
                    if lm.is_eval_document(text, settings.eval_fraction) == (split == "eval")
                ]
                stream = lm.token_stream(keep, tokenizer.eot_id)
                files[split].write(stream.astype(dtype).tobytes())
                counts[split] += len(stream)
                documents[split] += len(keep)
            log.info(
                "tokenized %d documents, %d tokens so far",
                sum(documents.values()),
                sum(counts.values()),
            )
            chunk.clear()

        for doc in docs:
            chunk.append(" ".join(doc))
            if len(chunk) == _ENCODE_CHUNK:
                flush()
        if chunk:
            flush()
    finally:
        for f in files.values():
            f.close()
    meta = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "tokens": counts,
        "documents": documents,
        "cleaning": stats.as_dict(),
        "source": settings.source,
    }
    with open(os.path.join(output_dir, lm.PREPARED_META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the token files.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _OUTPUT_DIR.value:
        raise app.UsageError("--output_dir is required")
    logging.getLogger().setLevel(logging.INFO)
    meta = prepare(lm.LMDataSettings.from_config(_CONFIG.value.data), _OUTPUT_DIR.value)
    print(json.dumps({k: meta[k] for k in ("tokens", "documents", "cleaning")}, indent=2))


if __name__ == "__main__":
    app.run(main)
