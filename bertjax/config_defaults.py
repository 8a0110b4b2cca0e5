"""Builders of the config blocks every experiment shares, so configs state only what differs.

Config files (loaded by path) call these; each returns a fresh `ConfigDict` with the keys the
training loop reads (`bertjax/optim.py`, `bertjax/sharding.py`):

    config.optim = config_defaults.optimizer(learning_rate=1e-4, warmup_steps=10_000)
    config.mesh = config_defaults.mesh()
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def optimizer(
    *,
    learning_rate: float,
    name: str = "adamw",
    warmup_steps: int = 0,
    warmup_proportion: float | None = None,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    grad_clip_norm: float = 1.0,
    grad_accum_steps: int = 1,
) -> ml_collections.ConfigDict:
    """`config.optim`: AdamW (or LAMB) as google-research/bert's optimization.py by default.

    warmup_proportion: when set, the warmup is that share of the total steps (fine-tuning
      recipes) and replaces warmup_steps; None leaves the key out (fixed-step recipes).
    grad_clip_norm: global-norm clipping (as google-research/bert); grad_accum_steps:
      microbatches per optimizer step.
    """
    optim = ml_collections.ConfigDict()
    optim.name = name  # "adamw" | "lamb"
    optim.learning_rate = learning_rate
    optim.warmup_steps = warmup_steps
    if warmup_proportion is not None:
        optim.warmup_proportion = warmup_proportion
    optim.weight_decay = weight_decay
    optim.b1 = b1
    optim.b2 = b2
    optim.eps = eps
    optim.grad_clip_norm = grad_clip_norm
    optim.grad_accum_steps = grad_accum_steps
    return optim


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """`config.mesh`: sizes of the (data, fsdp, tensor) device axes; -1 fills what is left."""
    block = ml_collections.ConfigDict()
    block.data = data
    block.fsdp = fsdp
    block.tensor = tensor
    return block


def finetune_model() -> ml_collections.ConfigDict:
    """`config.model` of a fine-tuning config: sizes come from `init_from`'s checkpoint.

    preset ("" = take the checkpoint's) and vocab_size (0 = the tokenizer's / checkpoint's) are
    checked against that checkpoint; set a preset (e.g. "tiny") to train from scratch.
    """
    model = ml_collections.ConfigDict()
    model.preset = ""
    model.vocab_size = 0
    model.hidden_dropout = 0.1
    model.attention_dropout = 0.1
    # The new head's kernel initializer: "normal" (std 0.02, transformers' BertFor* heads) or
    # "truncated_normal" (google-research/bert's, std 0.88 x 0.02); see docs/finetuning.md.
    model.head_init = "normal"
    # The [PAD] row of the word embeddings gets no gradient (transformers' padding_idx; 0 =
    # [PAD] in BERT's vocabularies); -1: every row trains (google-research/bert). The SQuAD
    # span loss sees padding positions, where this shows in the score (docs/finetuning.md).
    model.pad_token_id = 0
    model.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision
    model.param_dtype = "float32"
    model.remat = "none"
    model.attention_impl = "auto"  # see bertjax/models/config.py
    model.kernels = "auto"  # "auto" | "xla" | "cpu_bf16": see bertjax/kernels
    return model


def finetune_schedule(
    config: ml_collections.ConfigDict, *, num_train_epochs: float = 3.0
) -> ml_collections.ConfigDict:
    """Sets the epoch-based schedule keys of a fine-tuning config on `config`; returns it.

    Evaluation on the whole validation set at the end of every epoch; one checkpoint kept.
    """
    config.batch_size = 32
    config.eval_batch_size = 0  # 0 = batch_size
    config.num_train_epochs = num_train_epochs
    config.total_steps = 0  # derived from num_train_epochs
    config.log_every = 50
    config.eval_every = 0  # 0 = at the end of every epoch
    config.eval_batches = 0  # unused: the whole validation set is evaluated
    config.checkpoint_every = 1000
    config.keep_checkpoints = 1
    return config


def from_file(caller: str, name: str, *args: str) -> ml_collections.ConfigDict:
    """`get_config(*args)` of config file `name` in the directory of `caller` (a config file's
    `__file__`): a config that differs from another in a few keys derives from it.

    Loaded by path: configs/ is not a package, and the command may run from any directory.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(caller)), name)
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)
