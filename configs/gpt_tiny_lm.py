"""Tiny GPT-2 language model on the embedded corpus: the CPU quickstart for causal LM.

    python -m bertjax.main --config=configs/gpt_tiny_lm.py --workdir=/tmp/gpt_tiny
    python -m bertjax.generate_cli --checkpoint=/tmp/gpt_tiny --prompt="The import statement"

A byte-level BPE vocabulary is trained on the corpus at start-up and saved in WORKDIR/tokenizer.
The held-out perplexity falls from ~490 at step 50 to ~136 at step 300 (a few minutes on 2 CPU
cores); the corpus is small (~55k tokens), so longer runs overfit. Any key can be overridden,
e.g. `--config.total_steps=100`.
"""

import ml_collections

from bertjax import config_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the tiny causal-LM config (GPT-2 architecture, L2/H128, seq 128)."""
    del arg
    config = ml_collections.ConfigDict()
    config.task = "causal_lm"
    config.seed = 0

    # Model: a preset plus overrides (see bertjax/models/config.py).
    config.model = ml_collections.ConfigDict()
    config.model.preset = "gpt_tiny"
    config.model.vocab_size = 0  # 0: take the tokenizer's vocabulary size
    config.model.max_position_embeddings = 256
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision
    config.model.param_dtype = "float32"
    config.model.remat = "none"

    # Data (bertjax/data/lm.py).
    config.data = ml_collections.ConfigDict()
    config.data.source = "embedded"  # "embedded" | "text_files" | "tfds"
    config.data.text_files = ""  # path or glob, comma-separated allowed
    config.data.text_format = "paragraphs"  # "bert" (sentence per line) | "paragraphs"
    config.data.tfds_name = ""
    config.data.tfds_split = "train"
    config.data.vocab_file = ""  # GPT-2 vocab.json; empty: train a BPE vocabulary
    config.data.merges_file = ""  # GPT-2 merges.txt
    config.data.vocab_size = 2048  # size of a trained vocabulary
    config.data.max_seq_length = 128
    config.data.document_masking = False  # True: no attention across documents in a row
    config.data.eval_fraction = 0.1  # documents held out for eval
    config.data.min_document_chars = 20
    config.data.dedup_documents = True
    config.data.unicode_errors = "strict"

    # Training.
    config.batch_size = 32  # global batch size (rows of max_seq_length tokens)
    config.total_steps = 300
    config.log_every = 25
    config.eval_every = 50
    config.eval_batches = 0  # 0: the whole eval set
    config.checkpoint_every = 150
    config.keep_checkpoints = 2
    config.skip_nonfinite_steps = 0  # > 0: skip up to so many NaN/Inf steps (no update)

    config.optim = config_defaults.optimizer(
        learning_rate=3e-3, warmup_steps=50, weight_decay=0.1, b2=0.95, eps=1e-8
    )

    # Mesh: sizes of the (data, fsdp, tensor) axes; -1 fills what is left.
    config.mesh = config_defaults.mesh()
    return config
