"""BERT-large with LAMB and huge batches (You et al. 2019, "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes"): the 64k/32k mixed-batch schedule of their Table 1.

Phase 1: batch 65536, sequence 128, 7038 steps; phase 2: batch 32768, sequence 512, 1563
steps (8601 in all). Learning rates and warmup fractions are those of NVIDIA's reproduction
(DeepLearningExamples, BERT/LAMB: 6e-3 with 28.43% warmup, then 4e-3 with 12.8%), each phase
decaying linearly to 0. LAMB excludes LayerNorm parameters and biases from weight decay and
from the layer-wise trust ratio.

    python -m bertjax.main --config=configs/bert_large_lamb_pretrain.py:phase1 --workdir=$RUN1 ...
    python -m bertjax.main --config=configs/bert_large_lamb_pretrain.py:phase2 --workdir=$RUN2 \
        --config.init_from=$RUN1 ...

A batch of 65536 does not fit at once on most slices: set ``optim.grad_accum_steps`` so that
batch_size / grad_accum_steps sequences fit (e.g. 64 on a v4-128 for phase 1); one logged step
is still one optimizer step.
"""

import ml_collections

from bertjax import config_defaults
from bertjax.data.settings import default_data_config

PHASES = {
    # phase: (max_seq_length, max_predictions_per_seq, batch, steps, lr, warmup proportion)
    "phase1": (128, 20, 65_536, 7_038, 6e-3, 0.2843),
    "phase2": (512, 80, 32_768, 1_563, 4e-3, 0.128),
}


def get_config(phase: str = "phase1") -> ml_collections.ConfigDict:
    """BERT-large + LAMB, `phase` "phase1" or "phase2"."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {sorted(PHASES)}")
    seq, predictions, batch, steps, lr, warmup = PHASES[phase]
    config = ml_collections.ConfigDict()
    config.task = "bert_pretrain"
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.preset = "large"
    config.model.vocab_size = 30522
    config.model.max_position_embeddings = 512
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    config.model.remat = "none"

    config.data = default_data_config()
    config.data.source = "text_files"
    config.data.vocab_file = ""
    config.data.max_seq_length = seq
    config.data.max_predictions_per_seq = predictions
    config.data.eval_fraction = 0.001

    config.batch_size = batch
    config.total_steps = steps
    config.log_every = 10
    config.eval_every = 500
    config.eval_batches = 4
    config.checkpoint_every = 200
    config.keep_checkpoints = 3
    config.skip_nonfinite_steps = 0  # > 0: skip up to so many NaN/Inf steps (no update)
    config.nsp_weight = 1.0
    config.profile_steps = ""  # e.g. "10,15": jax.profiler trace of steps 10-14
    config.init_from = ""

    config.optim = config_defaults.optimizer(
        name="lamb", learning_rate=lr, warmup_proportion=warmup
    )

    config.mesh = config_defaults.mesh()
    return config
