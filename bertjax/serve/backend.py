"""The model side of the server: tokenise texts into rows, run rows at a bucket, read results.

`EncoderBackend` holds a BERT-family module, its parameters and its tokenizer. It knows nothing
of HTTP or batching: `featurize` turns (text, text_pair) inputs into variable-length rows,
`compile` compiles one function per (batch, length) bucket of a `BucketGrid` ahead of time, and
`run` pads rows to a bucket, runs that compiled function and returns each row's outputs. Padding
rows and padding keys are masked (attention_mask = 0), so a row's outputs equal
`model.apply` on that text alone, whatever the batch and bucket it lands in. Classifiers and
encoders can instead run packed batches (`bertjax.serve.row_packing`: several inputs per token
row, attention kept within each): `compile(shapes, examples=E)` and `run(rows, plan)`.

Outputs of a row: `logits` (classification runs), `pooled` (the pooler's tanh output, when the
module has one), `cls` (the last hidden state at [CLS]) and `mean` (the mean of the last hidden
states over the row's real tokens), all float32 numpy arrays.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.data.glue import truncate_pair_lengths
from bertjax.serve.row_packing import PackPlan

PROBLEM_TYPES = ("single_label", "multi_label", "regression")


class InputTooLong(ValueError):
    """A text longer than the largest bucket, in a request that asked not to truncate."""

    def __init__(self, index: int, length: int, limit: int):
        super().__init__(
            f"inputs[{index}] has {length} tokens with [CLS]/[SEP], more than the limit of "
            f'{limit}; shorten it or send "truncate": true'
        )
        self.index, self.length, self.limit = index, length, limit


@dataclasses.dataclass(frozen=True)
class Row:
    """One tokenised input: `[CLS] a [SEP] (b [SEP])` ids and their segment ids.

    attention_mask: None when every token is real; else int32 [n] (a SQuAD window keeps its
    padding so that its logits there equal those of offline prediction at full width).
    """

    input_ids: np.ndarray  # int32 [n]
    token_type_ids: np.ndarray  # int32 [n]
    attention_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class EncoderBackend:
    """A BERT encoder or classifier ready to be compiled per bucket and run on padded rows.

    Args:
      module: the Flax module (`bertjax.models.build(model_config)`).
      params: its parameter tree (numpy or jax arrays).
      model_config: the `ModelConfig` it was built from.
      tokenizer: a `WordPieceTokenizer` (encode_batch, cls_id, sep_id, pad_id).
      max_seq_length: the longest row (with specials) a request may send.
      label_names: classifier label strings, index = logit (None: "LABEL_i").
      problem_type: "single_label" (softmax), "multi_label" (sigmoid), "regression" or None
        (no classification head).
      name: how /info names the model (the run directory, say).
      task: the run's task (run.json), reported by /info.
      manifest: the run's run.json (what else the run needs to read its inputs, e.g. a QA
        run's windows for /v1/explain); None = a bare model.
    """

    def __init__(
        self,
        module: Any,
        params: Any,
        model_config: Any,
        tokenizer: Any,
        *,
        max_seq_length: int,
        label_names: Sequence[str] | None = None,
        problem_type: str | None = None,
        name: str = "",
        task: str | None = None,
        manifest: dict[str, Any] | None = None,
    ):
        if model_config.model_type != "bert":
            raise ValueError(
                f"EncoderBackend serves BERT-family runs; model_type={model_config.model_type!r}"
            )
        self.module = module
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        if self.max_seq_length > model_config.max_position_embeddings:
            raise ValueError(
                f"max_seq_length={self.max_seq_length} exceeds the model's "
                f"max_position_embeddings={model_config.max_position_embeddings}"
            )
        self.has_classifier = model_config.head == "classification"
        if self.has_classifier:
            num_labels = model_config.num_labels
            if problem_type is None:
                problem_type = "regression" if num_labels == 1 else "single_label"
            if problem_type not in PROBLEM_TYPES:
                raise ValueError(f"problem_type={problem_type!r}; expected one of {PROBLEM_TYPES}")
            if label_names is None:
                label_names = [f"LABEL_{i}" for i in range(num_labels)]
            if problem_type != "regression" and len(label_names) != num_labels:
                raise ValueError(
                    f"{len(label_names)} label names for a classifier of {num_labels} labels"
                )
        self.problem_type = problem_type if self.has_classifier else None
        self.label_names = list(label_names) if self.has_classifier and label_names else None
        self.has_pooler = model_config.head in ("encoder", "pretraining", "classification")
        # One output vector per input (no per-token outputs): inputs may share token rows.
        self.can_pack_rows = model_config.head in ("encoder", "classification")
        self.name = name
        self.task = task
        self.manifest = manifest
        self.params = jax.device_put(params)
        # (batch, length) -> padded function; (rows, length, inputs) -> packed function.
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._compile_lock = threading.Lock()

    # -- tokenisation ---------------------------------------------------------------------------

    def featurize(
        self,
        texts: Sequence[str],
        pairs: Sequence[str | None] | None = None,
        *,
        truncate: bool,
        max_length: int | None = None,
    ) -> list[Row]:
        """Rows of `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` (longest-first truncation).

        max_length: the longest row allowed (default: max_seq_length). Longer rows are cut when
        `truncate`, else `InputTooLong` names the first one.
        """
        limit = min(max_length or self.max_seq_length, self.max_seq_length)
        tok = self.tokenizer
        ids_a = tok.encode_batch(list(texts))
        has_pair = pairs is not None and any(p is not None for p in pairs)
        ids_b = tok.encode_batch([p or "" for p in pairs]) if has_pair else None
        rows = []
        for i, a in enumerate(ids_a):
            b = ids_b[i] if ids_b is not None and pairs[i] is not None else None
            specials = 2 if b is None else 3
            total = len(a) + specials + (len(b) if b is not None else 0)
            if total > limit and not truncate:
                raise InputTooLong(i, total, limit)
            if b is None:
                ids = [tok.cls_id, *a[: limit - 2], tok.sep_id]
                types = [0] * len(ids)
            else:
                la, lb = truncate_pair_lengths(len(a), len(b), limit - 3)
                first = [tok.cls_id, *a[:la], tok.sep_id]
                second = [*b[:lb], tok.sep_id]
                ids = first + second
                types = [0] * len(first) + [1] * len(second)
            rows.append(Row(np.asarray(ids, np.int32), np.asarray(types, np.int32)))
        return rows

    # -- compiled functions ---------------------------------------------------------------------

    def _forward(self, params: Any, input_ids: jax.Array, token_type_ids: jax.Array,
                 attention_mask: jax.Array) -> dict[str, jax.Array]:  # fmt: skip
        batch = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
        }
        out = self.module.apply({"params": params}, batch, train=False)
        hidden = out["hidden_states"].astype(jnp.float32)
        mask = attention_mask.astype(jnp.float32)[:, :, None]
        result = {
            "cls": hidden[:, 0],
            # Padding positions hold finite values; the mask keeps them out of the mean.
            "mean": (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0),
        }
        if "pooled" in out:
            result["pooled"] = out["pooled"].astype(jnp.float32)
        # Classifier logits [B, labels], tagger logits [B, T, tags], span logits [B, T].
        for key in ("logits", "start_logits", "end_logits"):
            if key in out:
                result[key] = out[key].astype(jnp.float32)
        return result

    def _forward_packed(self, params: Any, input_ids: jax.Array, token_type_ids: jax.Array,
                        segment_ids: jax.Array, positions: jax.Array,
                        cls_index: jax.Array) -> dict[str, jax.Array]:  # fmt: skip
        """`_forward` on packed rows: outputs per input ([E, ...]), read at `cls_index` and
        averaged over each input's tokens (input i has segment id i + 1; 0 is padding)."""
        batch = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "segment_ids": segment_ids,
            "positions": positions,
            "cls_index": cls_index,
        }
        out = self.module.apply({"params": params}, batch, train=False)
        hidden = out["hidden_states"].astype(jnp.float32)
        flat = hidden.reshape(-1, hidden.shape[-1])
        examples = cls_index.shape[0]
        segments = segment_ids.reshape(-1)
        owner = jnp.where(segments > 0, segments - 1, examples)  # E: padding, sliced off
        sums = jax.ops.segment_sum(flat, owner, num_segments=examples + 1)[:examples]
        counts = jax.ops.segment_sum(jnp.ones_like(owner, jnp.float32), owner, examples + 1)
        result = {
            "cls": jnp.take(flat, cls_index, axis=0),
            "mean": sums / jnp.maximum(counts[:examples, None], 1.0),
        }
        if "pooled" in out:
            result["pooled"] = out["pooled"].astype(jnp.float32)
        if "logits" in out:
            result["logits"] = out["logits"].astype(jnp.float32)
        return result

    def compile(
        self,
        shapes: Sequence[tuple[int, int]],
        *,
        examples: int | None = None,
        workers: int | None = None,
    ) -> None:
        """Compiles the forward pass for each (batch, length) ahead of time, `workers` at once
        (default: one per CPU core, up to 4; XLA compiles without holding the GIL). jax's
        persistent compilation cache, when configured, serves the shapes it has seen before.

        examples: None = padded rows (one input per row); E = packed (rows, length) shapes
        holding up to E inputs (`can_pack_rows` runs only)."""
        if examples is not None and not self.can_pack_rows:
            raise ValueError(f"a {self.model_config.head!r} head has per-token outputs: not packed")
        forward = self._forward if examples is None else self._forward_packed
        jitted = jax.jit(forward)
        params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.params)

        def compile_one(key: tuple[int, ...]) -> Any:
            ids = jax.ShapeDtypeStruct(key[:2], jnp.int32)
            if examples is None:
                return jitted.lower(params_spec, ids, ids, ids).compile()
            cls_index = jax.ShapeDtypeStruct((examples,), jnp.int32)
            return jitted.lower(params_spec, ids, ids, ids, ids, cls_index).compile()

        suffix = () if examples is None else (examples,)
        with self._compile_lock:
            keys = [(*map(int, s), *suffix) for s in shapes]
            todo = [k for k in dict.fromkeys(keys) if k not in self._compiled]
            workers = workers or min(4, os.cpu_count() or 1)
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for key, compiled in zip(todo, pool.map(compile_one, todo), strict=True):
                    self._compiled[key] = compiled

    def warm_up(self, shapes: Sequence[tuple[int, int]], *, examples: int | None = None) -> None:
        """Runs each compiled (batch, length) once on [CLS] [SEP] rows (packed: one per row)."""
        row = Row(
            np.array([self.tokenizer.cls_id, self.tokenizer.sep_id], np.int32),
            np.zeros(2, np.int32),
        )
        for batch_size, length in shapes:
            if examples is None:
                self.run([row] * batch_size, (batch_size, length))
            else:
                placement = np.arange(batch_size)
                plan = PackPlan((batch_size, length), placement, 0 * placement, examples)
                self.run([row] * batch_size, plan)

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """(batch, length) of each padded function, (rows, length, inputs) of each packed one."""
        return sorted(self._compiled)

    def run(
        self, rows: Sequence[Row], shape: tuple[int, int] | PackPlan
    ) -> list[dict[str, np.ndarray]]:
        """Each row's outputs, the rows padded to the (batch, length) bucket `shape` or packed
        as the `PackPlan` `shape` says (its function must have been compiled)."""
        if isinstance(shape, PackPlan):
            return self._run_packed(rows, shape)
        batch_size, length = shape
        if len(rows) > batch_size or any(len(r) > length for r in rows):
            raise ValueError(f"{len(rows)} rows do not fit the bucket {shape}")
        compiled = self._compiled_for(tuple(shape))
        input_ids = np.full((batch_size, length), self.tokenizer.pad_id, np.int32)
        token_type_ids = np.zeros((batch_size, length), np.int32)
        attention_mask = np.zeros((batch_size, length), np.int32)
        for i, row in enumerate(rows):
            n = len(row)
            input_ids[i, :n] = row.input_ids
            token_type_ids[i, :n] = row.token_type_ids
            attention_mask[i, :n] = 1 if row.attention_mask is None else row.attention_mask
        # Padding rows keep one real key ([PAD] at position 0), so their softmax is defined.
        attention_mask[len(rows) :, 0] = 1
        outputs = jax.device_get(compiled(self.params, input_ids, token_type_ids, attention_mask))
        return [{k: np.asarray(v[i]) for k, v in outputs.items()} for i in range(len(rows))]

    def _run_packed(self, rows: Sequence[Row], plan: PackPlan) -> list[dict[str, np.ndarray]]:
        num_rows, length = plan.bucket
        if len(rows) != len(plan.row) or len(rows) > plan.examples:
            raise ValueError(f"{len(rows)} rows for a plan of {len(plan.row)} inputs")
        compiled = self._compiled_for((num_rows, length, plan.examples))
        input_ids = np.full((num_rows, length), self.tokenizer.pad_id, np.int32)
        token_type_ids = np.zeros((num_rows, length), np.int32)
        segment_ids = np.zeros((num_rows, length), np.int32)  # 0: padding, attends only padding
        positions = np.zeros((num_rows, length), np.int32)
        cls_index = np.zeros(plan.examples, np.int32)  # unused inputs read token 0, discarded
        for i, (row, r, start) in enumerate(zip(rows, plan.row, plan.start, strict=True)):
            if row.attention_mask is not None:
                raise ValueError("rows with padding of their own (QA windows) are not packed")
            n, span = len(row), slice(start, start + len(row))
            if r >= num_rows or start + n > length:
                raise ValueError(f"input {i} ({n} tokens) does not fit row {r} at {start}")
            input_ids[r, span] = row.input_ids
            token_type_ids[r, span] = row.token_type_ids
            segment_ids[r, span] = i + 1
            positions[r, span] = np.arange(n)
            cls_index[i] = r * length + start
        outputs = jax.device_get(
            compiled(self.params, input_ids, token_type_ids, segment_ids, positions, cls_index)
        )
        return [{k: np.asarray(v[i]) for k, v in outputs.items()} for i in range(len(rows))]

    def _compiled_for(self, key: tuple[int, ...]) -> Any:
        compiled = self._compiled.get(key)
        if compiled is None:
            # Never compile on the request path: a missing bucket is a bug in the grid.
            shape = key[:2] if len(key) == 2 else f"{key[:2]} packed for {key[2]} inputs"
            raise RuntimeError(f"bucket {shape} was not compiled at start-up")
        return compiled

    # -- description ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What /info reports about the model."""
        cfg = self.model_config
        return {
            "name": self.name,
            "task": self.task,
            "model_type": cfg.model_type,
            "head": cfg.head,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "dtype": cfg.dtype,
            "problem_type": self.problem_type,
            "label_names": self.label_names,
            "max_seq_length": self.max_seq_length,
            "poolings": self.poolings,
        }

    @property
    def poolings(self) -> list[str]:
        return ["mean", "cls"] + (["pooler"] if self.has_pooler else [])
