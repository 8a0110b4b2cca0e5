"""BERT-large pretraining with the paper's recipe (Devlin et al. 2018, section A.2).

Batch 256, Adam (lr 1e-4, beta1 0.9, beta2 0.999, weight decay 0.01), 10k warmup steps then
linear decay, dropout 0.1, 1M steps: sequence length 128 for the first 90% of the steps, then
512 for the rest (to learn the position embeddings). As google-research/bert runs it, the two
phases are two runs; phase 2 starts from phase 1's params (``init_from``) with its own schedule:

    python -m bertjax.main --config=configs/bert_large_pretrain.py:phase1 --workdir=$RUN1 \
        --config.data.text_files='/data/wiki/*.txt' --config.data.vocab_file=/data/vocab.txt
    python -m bertjax.main --config=configs/bert_large_pretrain.py:phase2 --workdir=$RUN2 \
        --config.init_from=$RUN1 --config.data.text_files=... --config.data.vocab_file=...

Check memory and FLOPs on your mesh before paying for it: add ``--dry_run`` (no data needed).
"""

import ml_collections

from bertjax import config_defaults
from bertjax.data.settings import default_data_config

PHASES = {
    # phase: (max_seq_length, max_predictions_per_seq, steps)
    "phase1": (128, 20, 900_000),
    "phase2": (512, 80, 100_000),
}


def get_config(phase: str = "phase1") -> ml_collections.ConfigDict:
    """BERT-large, `phase` "phase1" (seq 128, 900k steps) or "phase2" (seq 512, 100k steps)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {sorted(PHASES)}")
    seq, predictions, steps = PHASES[phase]
    config = ml_collections.ConfigDict()
    config.task = "bert_pretrain"
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.preset = "large"  # L24 / H1024 / A16, 340M parameters
    config.model.vocab_size = 30522  # bert-base-uncased's vocab.txt
    config.model.max_position_embeddings = 512  # both phases: phase 2 reuses phase 1's params
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.dtype = "bfloat16"  # compute; params stay float32
    config.model.param_dtype = "float32"
    config.model.remat = "none"  # "full" / "dots_saveable" trade compute for memory

    config.data = default_data_config()
    config.data.source = "text_files"  # or "tfds" / "prepared" (see the README)
    config.data.vocab_file = ""  # empty: train a WordPiece vocabulary at start-up
    config.data.max_seq_length = seq
    config.data.max_predictions_per_seq = predictions
    config.data.eval_fraction = 0.001

    config.batch_size = 256
    config.total_steps = steps
    config.log_every = 100
    config.eval_every = 10_000
    config.eval_batches = 100
    config.checkpoint_every = 10_000
    config.keep_checkpoints = 3
    config.skip_nonfinite_steps = 0  # > 0: skip up to so many NaN/Inf steps (no update)
    config.nsp_weight = 1.0
    config.profile_steps = ""  # e.g. "10,15": jax.profiler trace of steps 10-14
    config.init_from = ""  # phase 2: the phase-1 run directory

    # AdamW as google-research/bert's optimization.py (clipping at 1.0; raise
    # grad_accum_steps when 256 sequences do not fit at once).
    config.optim = config_defaults.optimizer(learning_rate=1e-4, warmup_steps=10_000)

    config.mesh = config_defaults.mesh()
    return config
