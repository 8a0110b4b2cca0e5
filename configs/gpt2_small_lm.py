"""GPT-2 small (124M) pretraining, the recipe of nanoGPT's OpenWebText run (~GPT-2's own).

Tokenize the corpus once with GPT-2's vocabulary (vocab.json + merges.txt, e.g. from a Hugging
Face `gpt2` directory), then train from the memory-mapped token files:

    python -m bertjax.data.lm_prepare --config=configs/gpt2_small_lm.py \
        --config.data.source=tfds --config.data.tfds_name=c4/en --output_dir=/data/c4_gpt2 \
        --config.data.vocab_file=gpt2/vocab.json --config.data.merges_file=gpt2/merges.txt
    python -m bertjax.main --config=configs/gpt2_small_lm.py --workdir=/runs/gpt2_small \
        --config.data.prepared_dir=/data/c4_gpt2

Batch: 480 rows x 1024 tokens (~0.5M tokens, as GPT-2/nanoGPT) per step; on fewer or smaller
chips raise optim.grad_accum_steps instead of lowering batch_size. `--config.model.preset=
gpt2-medium` (355M) works the same way (lower the learning rate to 3e-4).
"""

import ml_collections

from bertjax import config_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the GPT-2 small pretraining config."""
    del arg
    config = ml_collections.ConfigDict()
    config.task = "causal_lm"
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.preset = "gpt2"
    config.model.vocab_size = 50304  # 50257 padded to a multiple of 128: faster matmuls
    config.model.max_position_embeddings = 1024
    config.model.hidden_dropout = 0.0  # nanoGPT: no dropout for pretraining on a large corpus
    config.model.attention_dropout = 0.0
    config.model.dtype = "bfloat16"  # compute; params stay float32
    config.model.param_dtype = "float32"
    config.model.remat = "none"  # "dots_with_no_batch_dims_saveable" if memory is short

    config.data = ml_collections.ConfigDict()
    config.data.source = "prepared"  # see the docstring; "tfds" / "text_files" tokenize online
    config.data.prepared_dir = ""
    config.data.text_files = ""
    config.data.text_format = "paragraphs"
    config.data.tfds_name = ""
    config.data.tfds_split = "train"
    config.data.tfds_data_dir = ""
    config.data.tfds_text_key = "text"
    config.data.vocab_file = ""  # GPT-2's vocab.json (needed by lm_prepare and online sources)
    config.data.merges_file = ""  # GPT-2's merges.txt
    config.data.vocab_size = 50257
    config.data.max_seq_length = 1024
    config.data.document_masking = False  # GPT-2 attends across document boundaries
    config.data.eval_fraction = 0.0005
    config.data.min_document_chars = 20
    config.data.dedup_documents = True
    config.data.unicode_errors = "replace"

    config.batch_size = 480
    config.total_steps = 600_000
    config.log_every = 100
    config.eval_every = 2000
    config.eval_batches = 20
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3
    config.skip_nonfinite_steps = 0  # > 0: skip up to so many NaN/Inf steps (no update)

    config.optim = config_defaults.optimizer(
        learning_rate=6e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95, eps=1e-8
    )

    config.mesh = config_defaults.mesh()
    return config
