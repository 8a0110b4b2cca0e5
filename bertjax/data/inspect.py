r"""Batch inspector: see exactly what the model is fed.

    python -m bertjax.data.inspect --config=configs/bert_tiny_pretrain.py \
        [--config.data.KEY=...] [--config.seed=N] --num_batches=N --output=batches.npz

Writes the arrays `input_ids`, `token_type_ids`, `attention_mask`, `masked_lm_positions`,
`masked_lm_ids`, `masked_lm_weights`, `next_sentence_labels` (batches stacked along the first
axis: [num_batches * batch_size, ...]) and prints a few decoded rows with every masked position
shown as `[MASK:original]` (or `[RND word:original]`, `[KEEP:original]` for the 10% cases).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bertjax.data.pipeline import build_pretraining_data
from bertjax.data.tokenizer import WordPieceTokenizer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 1, "How many batches to write.")
_OUTPUT = flags.DEFINE_string("output", "batches.npz", "The .npz file to write.")
_SHOW = flags.DEFINE_integer("show", 3, "How many rows to print decoded.")
_VOCAB_DIR = flags.DEFINE_string(
    "vocab_dir", None, "Where a vocabulary trained at start-up is kept (reused next time)."
)
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "eval"], "Which iterator to inspect.")


def describe_row(tokenizer: WordPieceTokenizer, batch: dict[str, np.ndarray], row: int) -> str:
    """One row as text: segments, NSP label and every MLM target marked in place."""
    length = int(batch["attention_mask"][row].sum())
    ids = batch["input_ids"][row, :length]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    for pos, orig, w in zip(
        batch["masked_lm_positions"][row],
        batch["masked_lm_ids"][row],
        batch["masked_lm_weights"][row],
        strict=True,
    ):
        if w == 0:
            continue
        original = tokenizer.vocab[int(orig)]
        shown = tokens[pos]
        if ids[pos] == tokenizer.mask_id:
            tokens[pos] = f"[MASK:{original}]"
        elif ids[pos] == orig:
            tokens[pos] = f"[KEEP:{original}]"
        else:
            tokens[pos] = f"[RND {shown}:{original}]"
    n_targets = int(batch["masked_lm_weights"][row].sum())
    label = int(batch["next_sentence_labels"][row])
    return (
        f"row {row}: {length} tokens, {n_targets} MLM targets, next_sentence_label={label} "
        f"({'random/swapped' if label else 'IsNext'})\n  " + " ".join(tokens)
    )


def main(argv: Sequence[str]) -> None:
    del argv
    config = _CONFIG.value
    data = build_pretraining_data(
        config.data,
        seed=int(config.get("seed", 0)),
        local_batch_size=int(config.get("batch_size", 8)),
        vocab_dir=_VOCAB_DIR.value,
    )
    if _SPLIT.value == "train":
        it = data.train_iterator()
        batches = [next(it) for _ in range(_NUM_BATCHES.value)]
    else:
        batches = list(data.eval_iterator(_NUM_BATCHES.value))
    arrays = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    np.savez(_OUTPUT.value, **arrays)
    print(f"cleaning: {data.stats.summary()}")
    print(f"vocabulary: {data.vocab_size} tokens; objective: {data.sentence_objective}")
    labels = arrays["next_sentence_labels"]
    # A share near 1.0 means documents of one sentence each: NSP/SOP would learn nothing.
    print(
        f"next_sentence_labels: {labels.mean():.3f} random/swapped over {labels.size} rows; "
        f"sentences per kept document: "
        f"{data.stats.sentences_kept / max(data.stats.documents_kept, 1):.2f}"
    )
    for k, v in arrays.items():
        print(f"  {k:22s} {str(v.shape):14s} {v.dtype}")
    print(f"wrote {_OUTPUT.value}\n")
    for row in range(min(_SHOW.value, len(arrays["input_ids"]))):
        print(describe_row(data.tokenizer, arrays, row) + "\n")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
