"""Packed fine-tuning batches: the examples of a batch laid back to back in as few rows as fit.

A sequence-level fine-tuning batch of B examples padded to max_seq_length L pays for B x L
tokens, most of them [PAD] on short texts (SST-2 sentences average ~13 WordPieces, so at L=64
four fifths of every row is padding). Packing puts the same B examples, each exactly as
`bertjax.data.features` laid it out, into R <= B rows of L tokens:

    input_ids       [CLS] a a [SEP] [CLS] b [SEP] c c [SEP] [PAD] ...
    token_type_ids    0   0 0   0     0   0   0   1 1   1     0
    segment_ids       1   1 1   1     2   2   2   2 2   2     0
    positions         0   1 2   3     0   1   2   3 4   5     0
    cls_index       [0, 4, ...]   (flat index row * L + column of each example's [CLS])

The model attends only within equal segment ids and restarts positions at each [CLS]
(`bertjax.models.attention.AttentionMask`, `BertEmbeddings`), so each example gets the outputs
it would get alone; the pooler reads each example's [CLS] through `cls_index`, so labels,
weights, logits and losses stay one per example ([B]), in batch order. Token classification
keeps its per-token labels per example ([B, L]) too and reads each example's token logits back
from its row at `cls_index`, its first token (`bertjax.tasks.finetune.per_example_tokens`). A
step therefore sees the same B examples and the same gradient as an unpacked one (up to float
rounding; dropout draws other masks), for fewer tokens. This is the "packing without
cross-contamination" of NVIDIA's and Graphcore's BERT, applied to fine-tuning batches.

Shapes: R is the rows the fullest host needs (first-fit decreasing), rounded up to
`row_multiple` (a multiple of the devices a host splits its rows over) and capped at the host's
B / P examples, so every host of a multi-host run builds the same shape without talking: each
packs the whole global batch's lengths and takes the largest count. A run compiles one train
step per R it meets (a handful: `bertjax.train.Trainer.step_for`). Padding examples (index -1,
the top-up of a last batch) take no row: weight 0, `cls_index` 0.
"""

from __future__ import annotations

import math

import numpy as np

from bertjax.data.features import MODEL_KEYS
from bertjax.data.packing import first_fit

ROW_KEYS = (*MODEL_KEYS, "segment_ids", "positions")  # the keys laid out per packed row
PACKING_KEYS = ("segment_ids", "positions", "cls_index")  # what packing adds to a batch


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """The row of each item when items are placed longest first into the first row with room
    (rows of `capacity` tokens); ties keep the given order. int64[n].

    Pretraining's `first_fit` on the sorted lengths, with a row per item available, so that
    none is ever deferred."""
    n = len(lengths)
    if n == 0:  # a host whose share of the batch is all padding
        return np.zeros(0, np.int64)
    order = np.argsort(-lengths, kind="stable")
    placed = first_fit(lengths[order], num_rows=n, max_seq_length=capacity, max_instances_per_row=n)
    rows = np.empty(n, np.int64)
    rows[order[placed.index]] = placed.row
    return rows


class ExamplePacker:
    """Packs rows of featurised fine-tuning examples (`features`: [N, L] model inputs plus
    per-example keys such as labels) into batches as the module docstring lays out."""

    def __init__(self, features: dict[str, np.ndarray], row_multiple: int = 1):
        self.features = features
        self.max_seq_length = int(features["input_ids"].shape[1])
        self.row_multiple = max(int(row_multiple), 1)
        # Real tokens of each example (rows are right-padded, so they are its first ones).
        self.lengths = features["attention_mask"].sum(axis=1).astype(np.int64)

    def rows_of(self, examples: np.ndarray) -> np.ndarray:
        """The row of each real example of `examples` (-1 = padding, given no row), first-fit
        decreasing."""
        return first_fit_decreasing(self.lengths[examples[examples >= 0]], self.max_seq_length)

    def rows_needed(self, examples: np.ndarray) -> int:
        """Rows that first-fit decreasing packs `examples` (-1 = padding, no room) into."""
        return int(self.rows_of(examples).max(initial=-1)) + 1

    def pack(
        self,
        global_examples: np.ndarray,
        keys: tuple[str, ...],
        process_index: int = 0,
        process_count: int = 1,
    ) -> dict[str, np.ndarray]:
        """This host's packed batch of the global batch `global_examples` (int64, -1 = padding).

        `keys`: the per-example keys to carry besides the model inputs (e.g. labels); "weights"
        is added (1 for real examples, 0 for padding).
        """
        local = len(global_examples) // process_count
        hosts = global_examples.reshape(process_count, local)
        rows = [self.rows_of(h) for h in hosts]
        need = max(int(r.max(initial=-1)) + 1 for r in rows)
        num_rows = min(max(math.ceil(need / self.row_multiple), 1) * self.row_multiple, local)
        mine = hosts[process_index]
        return self._layout(
            mine, rows[process_index], keys, num_rows, row_offset=process_index * num_rows
        )

    def _layout(
        self,
        examples: np.ndarray,
        rows: np.ndarray,
        keys: tuple[str, ...],
        num_rows: int,
        row_offset: int,
    ) -> dict[str, np.ndarray]:
        """The batch of `examples`, each real one in its row of `rows` (in their order)."""
        feats, length = self.features, self.max_seq_length
        batch = {k: np.zeros((num_rows, length), np.int32) for k in ROW_KEYS}
        real = examples >= 0
        take = np.where(real, examples, 0)
        for key in keys:
            if key not in MODEL_KEYS:
                values = feats[key][take]
                values[~real] = 0
                batch[key] = values
        batch["weights"] = real.astype(np.float32)
        cls_index = np.zeros(len(examples), np.int32)
        idx = np.flatnonzero(real)
        used = np.zeros(num_rows, np.int64)
        slots = np.zeros(num_rows, np.int64)
        for i, r in zip(idx.tolist(), rows.tolist(), strict=True):
            ex, n = int(examples[i]), int(self.lengths[examples[i]])
            start = int(used[r])
            cols = slice(start, start + n)
            for key in MODEL_KEYS:
                batch[key][r, cols] = feats[key][ex, :n]
            slots[r] += 1
            batch["segment_ids"][r, cols] = slots[r]
            batch["positions"][r, cols] = np.arange(n)
            cls_index[i] = (row_offset + r) * length + start
            used[r] += n
        batch["cls_index"] = cls_index
        return batch
