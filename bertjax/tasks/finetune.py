"""The fine-tuning core shared by every sequence-level task (GLUE presets, the user's files).

* `init_from` resolution: a Hugging Face checkpoint directory (config.json + model.safetensors)
  or a bertjax run / checkpoint directory; its encoder (embeddings, encoder layers, pooler) is
  grafted onto the fresh model, its heads (MLM, NSP, an old classifier) are dropped; sizes,
  vocabulary and casing are checked against the run's config (`InitFromError` says which).
  Empty `init_from` trains `config.model.preset` from scratch with `config.data.vocab_file`.
* The classifier's ModelConfig, parameters and batch shapes.
* Losses over the real rows of a batch (`weights` = 0 marks padding rows): softmax
  cross-entropy (single label), sigmoid binary cross-entropy (multi-label, `labels` a multi-hot
  [B, C] float), squared error (regression, one output); the per-row eval outputs.
* `make_task_data`: featurised splits -> the epoch iterator, padded eval sets and run.json fields.
  With `config.data.pack_sequences` (the default of configs/classify.py and configs/glue.py)
  train and eval batches are packed (`bertjax.data.example_packing`): the same examples per
  step in fewer rows, labels and losses still one per example.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from bertjax import models
from bertjax.data import batching, example_packing, features
from bertjax.inference import manifest as run_manifest
from bertjax.tasks.base import HostInfo, TaskData

VOCAB_FILE = "vocab.txt"
ENCODER_KEYS = ("embeddings", "encoder", "pooler")  # the parts of BERT that are fine-tuned
SIZE_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
# config.model keys that are ModelConfig fields applied on top of the checkpoint's config.
_RUNTIME_FIELDS = (
    "hidden_dropout", "attention_dropout", "dtype", "param_dtype", "remat", "head_init"
)  # fmt: skip


class InitFromError(ValueError):
    """config.init_from does not fit the run (missing files, size or vocabulary mismatch)."""


# ---------------------------------------------------------------------------------------------
# The pretrained checkpoint: what kind, its model config, its params, its vocabulary
# ---------------------------------------------------------------------------------------------


def is_hf_checkpoint(path: str) -> bool:
    """True for a Hugging Face checkpoint directory (config.json + safetensors weights)."""
    p = pathlib.Path(path)
    return (p / "config.json").is_file() and any(
        (p / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")
    )


@functools.lru_cache(maxsize=1)
def _bertjax_params(path: str) -> dict[str, Any]:
    """Params of a bertjax checkpoint (cached: build_model and init_params both need them)."""
    from bertjax import checkpointing

    try:
        return checkpointing.restore_params(path)
    except FileNotFoundError as e:
        raise InitFromError(
            f"config.init_from={path!r} is neither a Hugging Face checkpoint directory "
            f"(config.json + model.safetensors) nor a bertjax checkpoint: {e}"
        ) from e


def _shape(params: dict[str, Any], *keys: str) -> tuple[int, ...]:
    node: Any = params
    for key in keys:
        node = node[key]
    return tuple(np.shape(node))


def config_from_params(params: dict[str, Any], base: models.ModelConfig) -> models.ModelConfig:
    """The sizes of a BERT params tree read off its shapes; other fields from `base`."""
    try:
        vocab, hidden = _shape(params, "embeddings", "word_embeddings", "embedding")
        layers = [k for k in params["encoder"] if k.startswith("layer_")]
        _, heads, _ = _shape(params, "encoder", "layer_0", "attention", "query", "kernel")
        _, intermediate = _shape(params, "encoder", "layer_0", "mlp", "wi", "kernel")
        positions, _ = _shape(params, "embeddings", "position_embeddings", "embedding")
        types, _ = _shape(params, "embeddings", "token_type_embeddings", "embedding")
    except (KeyError, TypeError, ValueError) as e:
        raise InitFromError(f"the checkpoint is not a bertjax BERT (no {e} in its params)") from e
    return base.replace(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=len(layers),
        num_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        type_vocab_size=types,
    )


def pretrained_config(config: ml_collections.ConfigDict) -> models.ModelConfig:
    """ModelConfig of config.init_from (sizes, activation, eps), before the head is set."""
    path = config.init_from
    if is_hf_checkpoint(path):
        from bertjax.convert import hf_bert

        hf = json.loads((pathlib.Path(path) / "config.json").read_text())
        if hf.get("model_type") != "bert":
            raise InitFromError(
                f"{path}/config.json: model_type={hf.get('model_type')!r}; fine-tuning "
                "needs a BERT encoder"
            )
        return hf_bert.config_from_hf(hf, head="encoder")
    manifest = _manifest_near(path)
    base = models.ModelConfig()
    if manifest is not None:  # a bertjax run: its exact config (activation, eps...)
        base = models.ModelConfig.from_dict(manifest["model"])
    return config_from_params(_bertjax_params(path), base)


def load_pretrained_params(path: str) -> tuple[dict[str, Any], list[str]]:
    """(encoder params as numpy, names of the dropped top-level parts) of a checkpoint."""
    if is_hf_checkpoint(path):
        from bertjax import convert

        _, params = convert.from_hf(path, head="encoder")
        dropped: list[str] = []
    else:
        params = _bertjax_params(path)
        dropped = sorted(k for k in params if k not in ENCODER_KEYS)
    missing = [k for k in ("embeddings", "encoder") if k not in params]
    if missing:
        raise InitFromError(f"config.init_from={path!r} has no {missing} params")
    return {k: params[k] for k in ENCODER_KEYS if k in params}, dropped


def _find_near(path: str, name: str, levels: int = 3) -> pathlib.Path | None:
    """`name` in `path` or up to `levels` parents (a step dir sits in WORKDIR/checkpoints/N)."""
    p = pathlib.Path(path).resolve()
    for candidate in [p, *p.parents][: levels + 1]:
        if (candidate / name).is_file():
            return candidate / name
    return None


def _manifest_near(path: str) -> dict[str, Any] | None:
    """The run.json (or legacy glue_run.json) of the run that holds checkpoint `path`."""
    for name in (run_manifest.RUN_FILE, run_manifest.LEGACY_GLUE_FILE):
        found = _find_near(path, name)
        if found is not None:
            return run_manifest.read_manifest(found.parent)
    return None


def _checkpoint_vocab(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    if not config.init_from:
        return None
    if is_hf_checkpoint(config.init_from):
        path = pathlib.Path(config.init_from) / VOCAB_FILE
        return path if path.is_file() else None
    return _find_near(config.init_from, VOCAB_FILE)


def _checkpoint_lower_case(config: ml_collections.ConfigDict) -> bool | None:
    """The casing the checkpoint's vocabulary was used with, when the checkpoint says."""
    vocab = _checkpoint_vocab(config)
    if vocab is None:
        return None
    for meta_name in ("tokenizer_config.json", "vocab_meta.json"):
        meta = vocab.parent / meta_name
        if meta.is_file():
            value = json.loads(meta.read_text()).get("do_lower_case")
            if value is not None:
                return bool(value)
    if not is_hf_checkpoint(config.init_from):
        manifest = _manifest_near(config.init_from)
        if manifest is not None and manifest["tokenizer"]["type"] == "wordpiece":
            return bool(manifest["tokenizer"]["do_lower_case"])
    return None


def resolve_tokenizer(config: ml_collections.ConfigDict):
    """The WordPiece tokenizer of the run, checked against init_from's vocabulary and casing."""
    from bertjax.data.tokenizer import WordPieceTokenizer, read_vocab_file

    ckpt_vocab = _checkpoint_vocab(config)
    vocab_file = config.data.vocab_file
    if vocab_file:
        if ckpt_vocab is not None:
            ours, theirs = read_vocab_file(vocab_file), read_vocab_file(str(ckpt_vocab))
            if ours != theirs:
                line = next(
                    (i + 1 for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    min(len(ours), len(theirs)) + 1,
                )
                raise InitFromError(
                    f"vocabulary mismatch: config.data.vocab_file={vocab_file} "
                    f"({len(ours)} tokens) differs from the checkpoint's {ckpt_vocab} "
                    f"({len(theirs)} tokens) from line {line} on (init_from={config.init_from}); "
                    "fine-tuning needs the vocabulary the encoder was pretrained with"
                )
    elif ckpt_vocab is not None:
        vocab_file = str(ckpt_vocab)
    else:
        where = f"next to config.init_from={config.init_from!r}" if config.init_from else ""
        raise InitFromError(
            f"no vocabulary: config.data.vocab_file is empty and no vocab.txt {where}"
        )
    lower = _checkpoint_lower_case(config)
    if lower is not None and lower != bool(config.data.do_lower_case):
        raise InitFromError(
            f"casing mismatch: the checkpoint's vocabulary {ckpt_vocab} is used with "
            f"do_lower_case={lower}, but config.data.do_lower_case={config.data.do_lower_case}"
        )
    return WordPieceTokenizer.from_vocab_file(vocab_file, do_lower_case=config.data.do_lower_case)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def model_config(
    config: ml_collections.ConfigDict, vocab_size: int | None, num_labels: int
) -> models.ModelConfig:
    """The classifier's ModelConfig: init_from's sizes (or config.model.preset) + a head of
    `num_labels` outputs (1 = regression).

    A config.model.preset or vocab_size that contradicts the checkpoint, a tokenizer with more
    tokens than the model's embedding table, or max_seq_length beyond the position embeddings
    is an error saying which.
    """
    runtime = {k: config.model[k] for k in _RUNTIME_FIELDS}
    pad = config.model.get("pad_token_id", -1)
    runtime["pad_token_id"] = None if pad < 0 else int(pad)
    runtime["attention_impl"] = config.model.get("attention_impl", "auto")
    runtime["kernels"] = config.model.get("kernels", "auto")  # bertjax/kernels
    head = dict(head="classification", num_labels=num_labels, **runtime)
    preset = config.model.preset
    if config.init_from:
        cfg = pretrained_config(config)
        if preset:
            want = models.get_config(preset)
            diffs = [
                f"{f}: preset {getattr(want, f)} != checkpoint {getattr(cfg, f)}"
                for f in SIZE_FIELDS
                if f in models.PRESETS[preset] and getattr(want, f) != getattr(cfg, f)
            ]
            if diffs:
                raise InitFromError(
                    f"size mismatch between config.model.preset={preset!r} and "
                    f"config.init_from={config.init_from!r}: {'; '.join(diffs)} "
                    "(leave config.model.preset empty to take the checkpoint's sizes)"
                )
        if config.model.vocab_size and config.model.vocab_size != cfg.vocab_size:
            raise InitFromError(
                f"size mismatch: config.model.vocab_size={config.model.vocab_size} but the "
                f"checkpoint's embedding table has {cfg.vocab_size} rows"
            )
        cfg = cfg.replace(**head)
    else:
        if not preset:
            raise ValueError(
                "set config.init_from (a pretrained checkpoint) or config.model.preset"
            )
        vocab = config.model.vocab_size or vocab_size or 30522
        cfg = models.get_config(preset, vocab_size=vocab, **head)
    if vocab_size is not None and vocab_size > cfg.vocab_size:
        raise InitFromError(
            f"vocabulary mismatch: the tokenizer has {vocab_size} tokens but the model's "
            f"embedding table only {cfg.vocab_size} rows"
        )
    if config.data.max_seq_length > cfg.max_position_embeddings:
        raise ValueError(
            f"config.data.max_seq_length={config.data.max_seq_length} exceeds the model's "
            f"max_position_embeddings={cfg.max_position_embeddings}"
        )
    return cfg


def build_model(data: TaskData | None, dry_run_config: Any) -> tuple[models.ModelConfig, Any]:
    """(ModelConfig, module): the one `make_task_data` chose, or `dry_run_config()` without data."""
    cfg = data.extras["model_config"] if data is not None else dry_run_config()
    return cfg, models.build(cfg)


def init_params(config: ml_collections.ConfigDict, model_cfg: Any, params: Any) -> Any:
    """The fresh params with embeddings / encoder / pooler taken from config.init_from."""
    if not config.init_from:
        return params
    pretrained, dropped = load_pretrained_params(config.init_from)
    _bertjax_params.cache_clear()  # the run holds its own copy from now on
    if dropped:
        logging.info("init_from %s: dropped %s", config.init_from, ", ".join(dropped))
    if "pooler" not in pretrained:
        logging.warning(
            "init_from %s has no pooler: it starts freshly initialised", config.init_from
        )

    def take(path, fresh):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[0] not in pretrained:
            return fresh  # the classifier (and a missing pooler)
        node: Any = pretrained
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise InitFromError(
                    f"config.init_from={config.init_from!r} lacks parameter {'/'.join(keys)}"
                )
            node = node[key]
        if tuple(np.shape(node)) != tuple(fresh.shape):
            raise InitFromError(
                f"size mismatch at {'/'.join(keys)}: checkpoint {np.shape(node)}, "
                f"model {tuple(fresh.shape)}"
            )
        return np.asarray(node)

    return jax.tree_util.tree_map_with_path(take, params)


def configured_best_metric(
    config: ml_collections.ConfigDict, default: str, has_eval: bool
) -> tuple[str, str] | None:
    """`Task.best_metric` of a task with a fixed default key: config.best_metric or `default`,
    minimised when it is a loss, else maximised; None when the run has no eval set."""
    if not has_eval:
        return None
    key = config.get("best_metric", "") or default
    return key, "min" if key.endswith("/loss") else "max"


def packs(config: ml_collections.ConfigDict) -> bool:
    """Whether this run packs its batches (config.data.pack_sequences)."""
    return bool(config.data.get("pack_sequences", False))


def batch_spec(
    config: ml_collections.ConfigDict, model_cfg: Any, batch_size: int, multi_label: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
    """Global batch shapes: int32 inputs; labels int32 [B], float32 [B] (regression) or
    float32 [B, C] multi-hot (multi-label); weights float32 [B]. Packed runs add segment_ids
    and positions [R, L] and cls_index [B]; R = B here, the most rows a batch can need (a
    batch with fewer gets its own compiled step: `bertjax.train.Trainer.step_for`)."""
    spec = input_spec(config, batch_size)
    if multi_label:
        spec["labels"] = jax.ShapeDtypeStruct((batch_size, model_cfg.num_labels), jnp.float32)
    else:
        label_dtype = jnp.float32 if model_cfg.num_labels == 1 else jnp.int32
        spec["labels"] = jax.ShapeDtypeStruct((batch_size,), label_dtype)
    return spec


def input_spec(
    config: ml_collections.ConfigDict, batch_size: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """What every fine-tuning batch carries besides its labels: the int32 token rows [B, L]
    (packed: plus segment_ids and positions, and cls_index [B]) and weights float32 [B]."""
    length = config.data.max_seq_length
    row_keys = example_packing.ROW_KEYS if packs(config) else features.MODEL_KEYS
    spec = {k: jax.ShapeDtypeStruct((batch_size, length), jnp.int32) for k in row_keys}
    if packs(config):
        spec["cls_index"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    spec["weights"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
    return spec


# ---------------------------------------------------------------------------------------------
# Loss and per-row eval outputs
# ---------------------------------------------------------------------------------------------


def per_example_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Loss of each row; the problem type is read off the shapes (see the module docstring)."""
    logits = logits.astype(jnp.float32)
    if labels.ndim == 2:  # multi-label: mean sigmoid BCE over labels, as BCEWithLogitsLoss
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1)
    if logits.shape[-1] == 1:  # regression (STS-B): squared error, as transformers' MSELoss
        return jnp.square(logits[:, 0] - labels.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def model_inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """What the encoder reads of a (padded or packed) fine-tuning batch."""
    keys = (*features.MODEL_KEYS, *example_packing.PACKING_KEYS)
    return {k: batch[k] for k in keys if k in batch}


def per_example_tokens(values: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """Each example's own token positions of a per-token model output `values` [rows, L, ...]:
    [B, L, ...] in batch order, as a padded batch has them (returned unchanged).

    In a packed batch example i's tokens start at its cls_index ([CLS] comes first); the
    positions past its end read the next example's tokens (clipped at the last row), where a
    padded row has [PAD]s: callers ignore both (their labels are -1, their weights 0).
    """
    if "cls_index" not in batch:
        return values
    rows, length = values.shape[:2]
    flat = values.reshape(rows * length, *values.shape[2:])
    index = batch["cls_index"].astype(jnp.int32)[:, None] + jnp.arange(length, dtype=jnp.int32)
    return jnp.take(flat, index, axis=0, mode="clip")


def loss_fn(config, model, params, batch, rng, train):
    rngs = {"dropout": rng} if train else None
    inputs = model_inputs(batch)
    logits = model.apply({"params": params}, inputs, train=train, rngs=rngs)["logits"]
    weights = batch["weights"]
    denom = jnp.maximum(weights.sum(), 1.0)
    loss = (per_example_loss(logits, batch["labels"]) * weights).sum() / denom
    metrics = {"loss": loss}
    if logits.shape[-1] > 1 and batch["labels"].ndim == 1:
        hits = (logits.argmax(-1) == batch["labels"]).astype(jnp.float32)
        metrics["accuracy"] = (hits * weights).sum() / denom
    return loss, metrics


def eval_step(config, model, params, batch):
    inputs = model_inputs(batch)
    logits = model.apply({"params": params}, inputs, train=False)["logits"]
    if batch["labels"].ndim == 2:  # multi-label: each label predicted when p > 0.5
        pred = (logits > 0).astype(jnp.float32)
    elif logits.shape[-1] == 1:
        pred = logits[:, 0]
    else:
        pred = logits.argmax(-1).astype(jnp.int32)
    return {
        "pred": pred,
        "label": batch["labels"],
        "weight": batch["weights"],
        "loss": per_example_loss(logits, batch["labels"]),
    }


def _log_split(name: str, feats: dict[str, np.ndarray], label_names: list[str] | None) -> None:
    labels = feats["labels"][feats["has_label"]]
    if labels.ndim == 2:
        dist = {n: int(c) for n, c in zip(label_names or [], labels.sum(0), strict=True)}
    elif label_names is None:
        dist = {"mean": round(float(labels.mean()), 4), "std": round(float(labels.std()), 4)}
    else:
        counts = np.bincount(labels.astype(np.int64), minlength=len(label_names))
        dist = {n: int(c) for n, c in zip(label_names, counts, strict=True)}
    logging.info("%s: %d examples, labels %s", name, len(feats["labels"]), dist)


def make_task_data(
    config: ml_collections.ConfigDict,
    host: HostInfo,
    tokenizer: Any,
    model_cfg: models.ModelConfig,
    train: dict[str, np.ndarray],
    eval_features: dict[str, dict[str, np.ndarray]],
    label_names: list[str] | None,
    manifest: dict[str, Any],
    extras: dict[str, Any] | None = None,
) -> TaskData:
    """The TaskData of a fine-tuning task from its featurised train and eval splits.

    Logs each split's size and label distribution; the train iterator is
    `bertjax.data.batching.TrainIterator`, eval sets padded `batching.eval_batches`; both
    packed when `packs(config)`.
    """
    if not train["has_label"].all():
        raise ValueError(f"the training set has {int((~train['has_label']).sum())} unlabelled rows")
    eval_batch = int(config.get("eval_batch_size", 0) or host.global_batch_size)
    if eval_batch % host.process_count:
        raise ValueError(f"config.eval_batch_size={eval_batch} is not divisible by the processes")
    split_packer = functools.partial(packer, config, host)
    iterator = batching.TrainIterator(
        train, host.global_batch_size, host.seed, host.process_index, host.process_count,
        packer=split_packer(train),
    )  # fmt: skip
    _log_split("train", train, label_names)
    for name, feats in eval_features.items():
        _log_split(name, feats, label_names)
    logging.info("%d steps per epoch", iterator.steps_per_epoch)

    eval_packers = {name: split_packer(feats) for name, feats in eval_features.items()}

    def eval_sets():
        return {
            name: batching.eval_batches(
                feats,
                eval_batch,
                host.process_index,
                host.process_count,
                packer=eval_packers[name],
            )  # fmt: skip
            for name, feats in eval_features.items()
        }

    return TaskData(
        train=iterator,
        eval_sets=eval_sets,
        vocab_size=tokenizer.vocab_size,
        steps_per_epoch=iterator.steps_per_epoch,
        extras={"tokenizer": tokenizer, "model_config": model_cfg, **(extras or {})},
        manifest=manifest,
    )


# Packed row counts are rounded up to a multiple of this (and of the devices a host splits its
# rows over), so that a run meets a handful of batch shapes, each compiled once.
PACKED_ROW_STEP = 4


def packer(
    config: ml_collections.ConfigDict, host: HostInfo, feats: dict[str, np.ndarray]
) -> example_packing.ExamplePacker | None:
    """The packer of one split, or None when the run does not pack."""
    if not packs(config):
        return None
    accum = int(config.optim.get("grad_accum_steps", 1))
    if accum != 1:
        raise ValueError(
            f"config.data.pack_sequences=True with config.optim.grad_accum_steps={accum}: "
            "packed batches cannot be split into microbatches; set one of them off (1 / False)"
        )
    row_multiple = math.lcm(PACKED_ROW_STEP, max(host.batch_shards, 1))
    return example_packing.ExamplePacker(feats, row_multiple)
