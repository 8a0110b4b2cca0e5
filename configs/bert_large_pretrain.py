"""BERT-large pretraining with the paper's recipe (Devlin et al. 2018, section A.2).

Batch 256, Adam (lr 1e-4, beta1 0.9, beta2 0.999, weight decay 0.01), 10k warmup steps then
linear decay, dropout 0.1, 1M steps: sequence length 128 for the first 90% of the steps, then
512 for the rest (to learn the position embeddings). As google-research/bert runs it, the two
phases are two runs; phase 2 starts from phase 1's params (``init_from``) with its own schedule:

    python -m bertjax.main --config=configs/bert_large_pretrain.py:phase1 --workdir=$RUN1 \
        --config.data.text_files='/data/wiki/*.txt' --config.data.vocab_file=/data/vocab.txt
    python -m bertjax.main --config=configs/bert_large_pretrain.py:phase2 --workdir=$RUN2 \
        --config.init_from=$RUN1 --config.data.text_files=... --config.data.vocab_file=...

Everything but the model size is configs/bert_base_pretrain.py's. Check memory and FLOPs on your
mesh before paying for it: add ``--dry_run`` (no data needed).
"""

import ml_collections

from bertjax import config_defaults


def get_config(phase: str = "phase1") -> ml_collections.ConfigDict:
    """BERT-large, `phase` "phase1" (seq 128, 900k steps) or "phase2" (seq 512, 100k steps)."""
    config = config_defaults.from_file(__file__, "bert_base_pretrain.py", phase)
    config.model.preset = "large"  # L24 / H1024 / A16, 340M parameters
    return config
