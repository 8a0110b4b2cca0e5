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
is still one optimizer step. Model, data and the rest are configs/bert_large_pretrain.py's.
"""

import ml_collections

from bertjax import config_defaults

PHASES = {
    # phase: (batch, steps, lr, warmup proportion); sequence lengths as bert_large_pretrain's
    # (128 with 20 predictions, then 512 with 80).
    "phase1": (65_536, 7_038, 6e-3, 0.2843),
    "phase2": (32_768, 1_563, 4e-3, 0.128),
}


def get_config(phase: str = "phase1") -> ml_collections.ConfigDict:
    """BERT-large + LAMB, `phase` "phase1" or "phase2"."""
    config = config_defaults.from_file(__file__, "bert_large_pretrain.py", phase)
    batch, steps, lr, warmup = PHASES[phase]
    config.batch_size = batch
    config.total_steps = steps
    config.log_every = 10
    config.eval_every = 500
    config.eval_batches = 4
    config.checkpoint_every = 200
    config.optim = config_defaults.optimizer(
        name="lamb", learning_rate=lr, warmup_proportion=warmup
    )
    return config
