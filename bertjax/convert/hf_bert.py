"""Hugging Face BERT <-> bertjax: an explicit key map with the transposes spelled out.

Handles BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
BertForQuestionAnswering and BertForTokenClassification checkpoints, with the "bert." prefix
or without it (a bare BertModel such as all-MiniLM-L6-v2).
torch Linear stores weight [out, in]; bertjax kernels are [in, out], and the attention
projections are split into heads: query/key/value [H, N, D] and out [N, D, H].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from bertjax.models.config import ModelConfig

# Registered buffers, not parameters: they may be in a checkpoint and carry nothing we need.
IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")

ARCHITECTURE_TO_HEAD = {
    "BertModel": "encoder",
    "BertForPreTraining": "pretraining",
    "BertForMaskedLM": "mlm",
    "BertForSequenceClassification": "classification",
    "BertForQuestionAnswering": "question_answering",
    "BertForTokenClassification": "token_classification",
}
# HF builds these without the pooler (add_pooling_layer=False).
NO_POOLER_HEADS = ("mlm", "question_answering", "token_classification")
HEAD_TO_ARCHITECTURE = {head: arch for arch, head in ARCHITECTURE_TO_HEAD.items()}

HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "relu": "relu",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: HF name and shape <-> bertjax param path and shape.

    kind "linear": HF [out, in] is transposed to [in, out], then reshaped to `shape`;
    kind "copy": reshaped only (embeddings, biases, LayerNorm).
    """

    hf_name: str
    path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    kind: str

    def to_bertjax(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            x = x.T
        return np.ascontiguousarray(x.reshape(self.shape))

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return np.ascontiguousarray(x.reshape(self.hf_shape[::-1]).T)
        return np.ascontiguousarray(x.reshape(self.hf_shape))


def key_map(cfg: ModelConfig, prefix: str = "bert.") -> list[Entry]:
    """Every tensor of the HF model of `cfg.head`, in HF naming (backbone under `prefix`)."""
    h, n, d, i, v = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
    )
    entries: list[Entry] = []

    def linear(hf: str, path: tuple[str, ...], out: int, inp: int, kernel=None, bias=None):
        entries.append(
            Entry(f"{hf}.weight", (*path, "kernel"), (out, inp), kernel or (inp, out), "linear")
        )
        entries.append(Entry(f"{hf}.bias", (*path, "bias"), (out,), bias or (out,), "copy"))

    def norm(hf: str, path: tuple[str, ...]):
        entries.append(Entry(f"{hf}.weight", (*path, "scale"), (h,), (h,), "copy"))
        entries.append(Entry(f"{hf}.bias", (*path, "bias"), (h,), (h,), "copy"))

    def embedding(hf: str, name: str, rows: int):
        entries.append(Entry(hf, ("embeddings", name, "embedding"), (rows, h), (rows, h), "copy"))

    p = prefix
    embedding(f"{p}embeddings.word_embeddings.weight", "word_embeddings", v)
    embedding(
        f"{p}embeddings.position_embeddings.weight",
        "position_embeddings",
        cfg.max_position_embeddings,
    )
    embedding(
        f"{p}embeddings.token_type_embeddings.weight", "token_type_embeddings", cfg.type_vocab_size
    )
    norm(f"{p}embeddings.LayerNorm", ("embeddings", "layer_norm"))
    for layer in range(cfg.num_layers):
        hf, jx = f"{p}encoder.layer.{layer}.", ("encoder", f"layer_{layer}")
        for name in ("query", "key", "value"):
            linear(f"{hf}attention.self.{name}", (*jx, "attention", name), h, h, (h, n, d), (n, d))
        linear(f"{hf}attention.output.dense", (*jx, "attention", "out"), h, h, (n, d, h))
        norm(f"{hf}attention.output.LayerNorm", (*jx, "attention_layer_norm"))
        linear(f"{hf}intermediate.dense", (*jx, "mlp", "wi"), i, h)
        linear(f"{hf}output.dense", (*jx, "mlp", "wo"), h, i)
        norm(f"{hf}output.LayerNorm", (*jx, "mlp_layer_norm"))
    if cfg.head not in NO_POOLER_HEADS:
        linear(f"{p}pooler.dense", ("pooler", "dense"), h, h)
    if cfg.head in ("pretraining", "mlm"):
        linear("cls.predictions.transform.dense", ("mlm", "transform"), h, h)
        norm("cls.predictions.transform.LayerNorm", ("mlm", "transform_layer_norm"))
        entries.append(Entry("cls.predictions.bias", ("mlm", "bias"), (v,), (v,), "copy"))
    if cfg.head == "pretraining":
        linear("cls.seq_relationship", ("nsp",), 2, h)
    if cfg.head in ("classification", "token_classification"):
        linear("classifier", ("classifier",), cfg.num_labels, h)
    if cfg.head == "question_answering":
        linear("qa_outputs", ("qa_outputs",), 2, h)
    return entries


# Tied aliases a checkpoint may store: (alias, the tensor it must equal).
def tied_aliases(prefix: str) -> dict[str, str]:
    return {
        "cls.predictions.decoder.weight": f"{prefix}embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }


def infer_head(tensors: Mapping[str, np.ndarray]) -> str:
    """The head a checkpoint holds, read from its tensor names."""
    if "cls.seq_relationship.weight" in tensors:
        return "pretraining"
    if "cls.predictions.bias" in tensors:
        return "mlm"
    if "qa_outputs.weight" in tensors:
        return "question_answering"
    if "classifier.weight" in tensors:
        # A token classifier is built without the pooler; a sequence classifier reads it.
        has_pooler = any(k.endswith("pooler.dense.weight") for k in tensors)
        return "classification" if has_pooler else "token_classification"
    return "encoder"


def config_from_hf(hf: Mapping[str, Any], head: str, **overrides: Any) -> ModelConfig:
    """ModelConfig of an HF BertConfig dict (unsupported variants raise, naming the key)."""
    for key, ok in (
        ("position_embedding_type", "absolute"),
        ("is_decoder", False),
        ("add_cross_attention", False),
    ):
        if hf.get(key, ok) != ok:
            raise ValueError(f"config.json: {key}={hf[key]!r} is not supported (only {ok!r})")
    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"config.json: hidden_act={act!r}; supported: {sorted(HF_ACTIVATIONS)}")
    num_labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    values = dict(
        model_type="bert",
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_act=HF_ACTIVATIONS[act],
        initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id", 0),  # BertConfig's default: [PAD] = 0
        head=head,
        num_labels=num_labels,
    )
    classifier_dropout = hf.get("classifier_dropout")
    if classifier_dropout is not None and classifier_dropout != values["hidden_dropout"]:
        raise ValueError(
            f"config.json: classifier_dropout={classifier_dropout} differs from "
            f"hidden_dropout_prob={values['hidden_dropout']}; bertjax uses one dropout rate"
        )
    values.update(overrides)
    return ModelConfig.from_dict(values)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The HF config.json dict of a BERT ModelConfig."""
    out: dict[str, Any] = {
        "architectures": [HEAD_TO_ARCHITECTURE[cfg.head]],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        # None = no padding_idx: the [PAD] row trains in transformers too (round-trips).
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    if cfg.head in ("classification", "token_classification"):
        out["id2label"] = {str(k): f"LABEL_{k}" for k in range(cfg.num_labels)}
        out["label2id"] = {f"LABEL_{k}": k for k in range(cfg.num_labels)}
        if cfg.num_labels == 1:
            out["problem_type"] = "regression"
    return out


def _normalise_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Old TF-converted checkpoints (bert-base-uncased) name LayerNorm params gamma / beta.
    out = {}
    for name, x in tensors.items():
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        out[name] = x
    return out


def from_hf(
    hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], **overrides: Any
) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of an HF BERT checkpoint; every tensor must be used exactly once.

    `overrides` change ModelConfig fields (e.g. dtype="bfloat16"). Asking for a smaller head
    than the checkpoint holds (head="encoder" on a BertForPreTraining checkpoint, to fine-tune
    its backbone) drops that head's known tensors on purpose; any other tensor left over, or
    one missing, raises.
    """
    arch = (hf_config.get("architectures") or [None])[0]
    if arch is not None and arch not in ARCHITECTURE_TO_HEAD:
        raise ValueError(
            f"unsupported BERT architecture {arch!r}; supported: {sorted(ARCHITECTURE_TO_HEAD)}"
        )
    tensors = _normalise_names(tensors)
    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    ckpt_head = infer_head(tensors)
    cfg = config_from_hf(hf_config, **{"head": ckpt_head, **overrides})

    entries = key_map(cfg, prefix)
    if ckpt_head in NO_POOLER_HEADS and cfg.head not in NO_POOLER_HEADS:
        # The backbone of a QA / token-tagging / MLM checkpoint has no pooler to give: the
        # params come without one (fine-tuning starts it fresh, see tasks/finetune.py).
        entries = [e for e in entries if e.path[0] != "pooler"]
    expected = {e.hf_name for e in entries}
    # Tensors the caller chose to drop by asking for a smaller head than the checkpoint's.
    droppable = set()
    if cfg.head != ckpt_head:
        droppable = {e.hf_name for e in key_map(cfg.replace(head=ckpt_head), prefix)} - expected
    aliases = tied_aliases(prefix)

    missing = sorted(expected - set(tensors))
    if missing:
        raise ValueError(
            f"checkpoint lacks {len(missing)} tensor(s) for head {cfg.head!r}: {missing}"
        )
    leftover = sorted(
        k
        for k in tensors
        if k not in expected
        and k not in droppable
        and k not in aliases
        and not k.endswith(IGNORED_SUFFIXES)
    )
    if leftover:
        raise ValueError(
            f"checkpoint has {len(leftover)} tensor(s) with no place in bertjax: {leftover}"
        )
    for alias, target in aliases.items():
        if alias in tensors and target in tensors and alias not in droppable:
            if not np.array_equal(tensors[alias], tensors[target]):
                raise ValueError(
                    f"{alias} differs from {target}: untied MLM decoders are not supported"
                )

    params: dict = {}
    dtype = cfg.params_dtype
    for e in entries:
        x = tensors[e.hf_name]
        if tuple(x.shape) != e.hf_shape:
            raise ValueError(
                f"tensor {e.hf_name} has shape {tuple(x.shape)}, "
                f"expected {e.hf_shape} from config.json"
            )
        node = params
        for key in e.path[:-1]:
            node = node.setdefault(key, {})
        node[e.path[-1]] = e.to_bertjax(np.asarray(x, np.float32)).astype(dtype)
    return cfg, params


def to_hf(cfg: ModelConfig, params: Mapping) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json dict, {HF name: float32 array}) of a bertjax BERT; every param used once."""
    entries = key_map(cfg, prefix="" if cfg.head == "encoder" else "bert.")
    flat = _flatten(params)
    expected = {e.path for e in entries}
    missing = sorted("/".join(p) for p in expected - set(flat))
    leftover = sorted("/".join(p) for p in set(flat) - expected)
    if missing or leftover:
        raise ValueError(
            f"params do not fit a BERT {cfg.head!r} model: missing {missing}, unexpected {leftover}"
        )
    tensors = {}
    for e in entries:
        x = np.asarray(flat[e.path], np.float32)
        if x.shape != e.shape:
            raise ValueError(f"param {'/'.join(e.path)} has shape {x.shape}, expected {e.shape}")
        tensors[e.hf_name] = e.to_hf(x)
    return config_to_hf(cfg), tensors


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out
