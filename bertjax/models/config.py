"""Model configuration: one frozen dataclass for every model family, plus size presets.

A `ModelConfig` is plain data (ints, floats, strings) so that it round-trips through
`to_dict` / `from_dict` (and so through JSON, ml_collections and checkpoints) unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

MODEL_TYPES = ("bert", "gpt2")
HEADS = (
    "encoder",
    "pretraining",
    "mlm",
    "classification",
    "question_answering",
    "token_classification",
    "causal_lm",
)
ACTIVATIONS = ("gelu", "gelu_new", "relu")
# Rematerialisation policies by name; see `remat_policy()` in layers.py for what each keeps.
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "reference")
DTYPES = ("float32", "bfloat16", "float16")
# The compute dtype may also be "auto": bertjax.kernels.cpu_features.preferred_compute_dtype.
COMPUTE_DTYPES = ("auto", *DTYPES)
KERNELS = ("auto", "xla", "cpu_bf16")  # see bertjax/kernels/__init__.py
HEAD_INITS = ("truncated_normal", "normal")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Transformer model (BERT now, GPT-2 shares the same fields).

    `dtype` is the compute dtype (matmul inputs, activations; "auto": bf16 on accelerators and
    on a CPU with AMX-BF16, float32 on other CPUs); `param_dtype` is the storage dtype of the
    parameters. `kernels` picks the backend-specific kernels (`bertjax/kernels`). LayerNorm
    statistics, softmax and output logits are always float32.
    """

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # "gelu" = exact erf GELU (BERT); "gelu_new" = tanh approx (GPT-2)
    initializer_range: float = 0.02
    # The kernel initializer of the task heads (classifier, span and tagger layers) that a
    # fine-tuning run adds to a pretrained encoder: "truncated_normal" = every other layer's and
    # google-research/bert's (cut at 2 std and not rescaled: its std is 0.88 x
    # initializer_range); "normal" = transformers' BertFor* heads (std = initializer_range).
    # In short fine-tuning runs the head's initial scale shows in the score (docs/finetuning.md).
    head_init: str = "truncated_normal"
    # The word-embedding row that gets no gradient from the lookup, as torch.nn.Embedding's
    # padding_idx in transformers' BERT (its pad_token_id, 0): None = every row trains, as
    # google-research/bert. It matters where a loss sees padding positions' outputs: the SQuAD
    # span loss takes its softmax over every position, so the [PAD] row's gradient there grows
    # with the padding and, through global-norm clipping, shrinks every other update.
    pad_token_id: int | None = None
    # "encoder" (BertModel), "pretraining" (MLM + NSP), "mlm" (BertForMaskedLM: MLM only, no
    # pooler), "classification" (sequence classification / regression), "causal_lm" (GPT).
    head: str = "encoder"
    num_labels: int = 2  # classification head outputs; 1 = regression
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    # "auto": cuDNN flash attention (through jax.nn.dot_product_attention) on a CUDA GPU with
    # bf16/fp16 compute and a head dim it supports, bertjax's canonical-layout attention
    # (models/attention.py) for bf16 on a CPU, else "xla" (jax 0.10's implementation=None never
    # picks cuDNN by itself); "xla": XLA's attention on any platform; "cudnn": force
    # cuDNN (errors where unsupported); "reference": the plain einsum formula. Training with
    # attention_dropout > 0 takes the CPU attention core on a CPU ("auto"/"cpu_bf16" kernels),
    # the reference formula elsewhere (the fused GPU kernels have no dropout).
    attention_impl: str = "auto"
    # "auto" | "xla" | "cpu_bf16": the kernel set of the matmuls, GELU and KV cache
    # (bertjax/kernels: "auto" = "cpu_bf16" on a CPU backend, "xla" elsewhere).
    kernels: str = "auto"

    def __post_init__(self) -> None:
        def check(name: str, value: Any, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ValueError(f"ModelConfig.{name}={value!r}; expected one of {allowed}")

        check("model_type", self.model_type, MODEL_TYPES)
        check("head", self.head, HEADS)
        check("hidden_act", self.hidden_act, ACTIVATIONS)
        check("remat", self.remat, REMAT_POLICIES)
        check("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        check("dtype", self.dtype, COMPUTE_DTYPES)
        check("kernels", self.kernels, KERNELS)
        check("head_init", self.head_init, HEAD_INITS)
        check("param_dtype", self.param_dtype, DTYPES)
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "num_labels",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"ModelConfig.pad_token_id={self.pad_token_id} is not a row of the "
                f"{self.vocab_size}-row word embeddings (None: every row trains)"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Per-head dimension d_k = hidden_size / num_heads."""
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The compute dtype, "auto" resolved for this host (backend and CPU flags)."""
        if self.dtype == "auto":
            import jax

            from bertjax.kernels import cpu_features

            return jnp.dtype(cpu_features.preferred_compute_dtype(jax.default_backend()))
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (unknown names raise, naming the key)."""
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a mapping; an unknown key raises a ValueError naming it."""
        _check_keys(values)
        return cls(**dict(values))


def _check_keys(values: Mapping[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig key(s) {unknown}; known keys: {sorted(known)}")


def _size(layers: int, hidden: int, heads: int) -> dict[str, int]:
    return dict(
        num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden
    )


def _gpt2(layers: int, hidden: int, heads: int, positions: int = 1024) -> dict[str, Any]:
    """GPT-2's settings (Radford et al. 2019; HF GPT2Config defaults) at a size."""
    return dict(
        _size(layers, hidden, heads),
        model_type="gpt2",
        head="causal_lm",
        vocab_size=50257,
        max_position_embeddings=positions,
        type_vocab_size=1,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
    )


# The sizes of the BERT paper and of Turc et al. 2019 ("Well-Read Students Learn Better"),
# then GPT-2's (gpt_tiny is a CPU-sized one for tests and the quickstart).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _size(2, 128, 2),
    "mini": _size(4, 256, 4),
    "small": _size(4, 512, 8),
    "medium": _size(8, 512, 8),
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
    "gpt_tiny": _gpt2(2, 128, 2, positions=256),
    "gpt2": _gpt2(12, 768, 12),  # 124M
    "gpt2-medium": _gpt2(24, 1024, 16),  # 355M
}


def get_config(preset: str = "base", **overrides: Any) -> ModelConfig:
    """A `ModelConfig` of a preset (tiny ... large; gpt_tiny, gpt2, gpt2-medium) plus overrides.

    >>> get_config("tiny", vocab_size=8192, head="pretraining").hidden_size
    128
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known presets: {sorted(PRESETS)}")
    _check_keys(overrides)
    return ModelConfig(**{**PRESETS[preset], **overrides})
