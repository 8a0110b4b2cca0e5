"""Fine-tune on your own labelled files (CSV, TSV or JSON lines): classification, multi-label
classification or regression, single texts or text pairs.

    python -m bertjax.main --config=configs/classify.py --workdir=runs/reviews \
      --config.init_from=/path/to/hf_or_bertjax_checkpoint \
      --config.data.train_file=train.csv --config.data.validation_file=dev.csv \
      --config.data.text_column=review --config.data.label_column=sentiment

Then `python -m bertjax.predict --workdir=runs/reviews --input=new.csv --output=pred.jsonl`.
See docs/finetuning.md and bertjax/tasks/classify.py.
"""

import ml_collections

from bertjax import config_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "classify"
    config.seed = 0

    # A Hugging Face checkpoint directory (config.json + model.safetensors) or a bertjax run /
    # checkpoint directory; "" trains config.model.preset from scratch with data.vocab_file.
    config.init_from = ""
    # The kept checkpoint (WORKDIR/best/): "" = eval/accuracy (single_label), eval/micro_f1
    # (multi_label), eval/pearson (regression); or e.g. "eval/macro_f1", "eval/loss" (min).
    config.best_metric = ""

    config.model = config_defaults.finetune_model()

    config.data = ml_collections.ConfigDict()
    config.data.train_file = ""
    config.data.validation_file = ""  # "" = no evaluation (the last checkpoint is the model)
    config.data.test_file = ""  # evaluated too when labelled
    config.data.format = ""  # "" = from the extension (.csv, .tsv, .jsonl); or csv | tsv | jsonl
    config.data.text_column = "text"
    config.data.text_pair_column = ""  # set for text pairs (e.g. question + passage)
    config.data.label_column = "label"
    # auto (single_label or regression, from the training labels) | single_label |
    # multi_label (a JSON list per row, or one field split on label_separator) | regression
    config.data.problem_type = "auto"
    config.data.label_separator = ","
    config.data.num_labels = 0  # only for --dry_run (no data is read): outputs of the head
    config.data.bad_rows = "error"  # "error" | "skip" (skipped rows are counted and logged)
    config.data.vocab_file = ""  # "" = init_from's vocab.txt
    config.data.do_lower_case = True
    config.data.max_seq_length = 128
    # Several examples per row (bertjax/data/example_packing.py): the same examples and
    # per-example losses per step in fewer rows, so short texts do not pay for padding.
    config.data.pack_sequences = True

    config_defaults.finetune_schedule(config)

    # Warmup: 10% of the steps (replaces warmup_steps), then linear decay.
    config.optim = config_defaults.optimizer(learning_rate=2e-5, warmup_proportion=0.1)

    config.mesh = config_defaults.mesh()
    return config
