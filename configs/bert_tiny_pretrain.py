"""Tiny BERT pretraining on the embedded corpus: the CPU quickstart.

    python -m bertjax.main --config=configs/bert_tiny_pretrain.py --workdir=/tmp/bert_tiny

Any key can be overridden on the command line, e.g. `--config.total_steps=100`.
"""

import ml_collections

from bertjax import config_defaults


def get_config() -> ml_collections.ConfigDict:
    """Returns the tiny pretraining config (L2/H128, seq 128, embedded corpus)."""
    config = ml_collections.ConfigDict()
    config.task = "bert_pretrain"
    config.seed = 0

    # Model: a size preset plus overrides (see bertjax/models/config.py).
    config.model = ml_collections.ConfigDict()
    config.model.preset = "tiny"
    config.model.vocab_size = 0  # 0: the tokenizer's size, rounded up to a multiple of 128.
    # The preset's sizes, spelled out so that --config.model.num_layers=1 etc. work.
    config.model.num_layers = 2
    config.model.hidden_size = 128
    config.model.num_heads = 2
    config.model.intermediate_size = 512
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.max_position_embeddings = 128
    config.model.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision
    config.model.param_dtype = "float32"
    config.model.remat = "none"

    # Data (bertjax/data): google-research/bert flag names where one exists; every key is
    # documented in bertjax/data/settings.py.
    config.data = ml_collections.ConfigDict()
    config.data.source = "embedded"  # "embedded" | "text_files" | "tfds" | "prepared"
    config.data.text_files = ""  # path or glob, comma-separated allowed
    config.data.text_format = "bert"  # "bert" (sentence per line) | "paragraphs"
    config.data.tfds_name = ""  # e.g. "wikipedia/20230601.en"
    config.data.tfds_split = "train"
    config.data.tfds_data_dir = ""  # empty: TFDS's default data dir
    config.data.tfds_text_key = "text"  # the feature holding a document's text
    config.data.prepared_dir = ""  # output of `python -m bertjax.data.prepare`
    config.data.vocab_file = ""  # empty: train a WordPiece vocabulary from the corpus
    # Size of a trained vocabulary; the embedded corpus supports about 3,400 pieces.
    config.data.vocab_size = 3000
    config.data.do_lower_case = True
    config.data.max_seq_length = 128
    config.data.max_predictions_per_seq = 20
    config.data.masked_lm_prob = 0.15
    config.data.short_seq_prob = 0.1
    config.data.do_whole_word_mask = False
    config.data.sentence_objective = "nsp"  # "nsp" | "sop" | "none"
    config.data.dupe_factor = 5  # offline `prepare` only: instance passes per document
    config.data.eval_fraction = 0.02  # documents held out for eval
    config.data.min_document_chars = 20
    config.data.dedup_documents = True
    config.data.unicode_errors = "strict"  # "strict" | "replace"
    # Sequence packing: several instances per row, so that padding is not paid for.
    config.data.pack_sequences = False
    config.data.max_instances_per_row = 4

    # Training: sized to learn visibly in a few minutes on 2 CPU cores (masked-token accuracy
    # from 0 to ~15%, eval MLM perplexity from ~3000 to ~230; see docs/training.md).
    config.batch_size = 32  # global batch size
    config.total_steps = 600
    config.log_every = 50
    config.eval_every = 150  # steps; 0: only at the end; -1: never
    config.eval_batches = 8
    config.checkpoint_every = 150
    config.keep_checkpoints = 3
    config.skip_nonfinite_steps = 0  # > 0: skip up to so many NaN/Inf steps (no update)
    config.nsp_weight = 1.0  # lambda in L = L_MLM + lambda * L_NSP
    config.profile_steps = ""  # e.g. "10,15": jax.profiler trace of steps 10-14
    config.init_from = ""  # a bertjax run/checkpoint or HF BertForPreTraining dir to start from

    # A small model takes a large step (5e-3 stalls).
    config.optim = config_defaults.optimizer(learning_rate=2e-3, warmup_steps=60)

    # Mesh: sizes of the (data, fsdp, tensor) axes; -1 fills what is left.
    config.mesh = config_defaults.mesh()
    return config
