"""Extractive question answering: SQuAD v1.1 / v2.0 JSON files (BERT paper section 4.2 / 4.3).

    python -m bertjax.main --config=configs/squad.py --workdir=runs/squad \
      --config.init_from=/path/to/hf_or_bertjax_checkpoint \
      --config.data.train_file=train-v1.1.json --config.data.validation_file=dev-v1.1.json

Windows as google-research/bert's run_squad.py (max_seq_length, doc_stride, max_query_length);
each evaluation writes WORKDIR/predictions_eval.json (official format) and logs exact_match /
f1. Then `python -m bertjax.predict --workdir=runs/squad --input=qs.jsonl --output=a.jsonl`
with {"question": ..., "context": ...} lines. See docs/qa_ner.md and bertjax/tasks/squad.py.
"""

import ml_collections

from bertjax import config_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "squad"
    config.seed = 0
    config.init_from = ""  # HF checkpoint dir or bertjax run / checkpoint; "" = from scratch
    config.best_metric = ""  # "" = eval/f1

    config.model = config_defaults.finetune_model()

    config.data = ml_collections.ConfigDict()
    config.data.train_file = ""  # SQuAD JSON (v1.1 or v2.0)
    config.data.validation_file = ""  # "" = no evaluation
    # Or TFDS (array_record files, no TensorFlow): "squad/v1.1" | "squad/v2.0"; then leave the
    # files empty.
    config.data.tfds_name = ""
    config.data.tfds_data_dir = ""  # "" = TFDS's default
    config.data.train_split = "train"
    config.data.validation_split = "validation"  # "" = no evaluation
    config.data.max_train_examples = 0  # >0: the first N training questions only
    config.data.max_eval_examples = 0  # >0: the first N validation questions only
    config.data.version_2_with_negative = "auto"  # auto (from the file) | "1.1" | "2.0"
    config.data.vocab_file = ""  # "" = init_from's vocab.txt
    config.data.do_lower_case = True
    config.data.max_seq_length = 384
    config.data.doc_stride = 128  # tokens between the starts of a question's windows
    config.data.max_query_length = 64
    config.data.n_best_size = 20
    config.data.max_answer_length = 30  # tokens
    config.data.null_score_diff_threshold = 0.0  # v2.0: "" when null - best span > this

    config_defaults.finetune_schedule(config, num_train_epochs=2.0)

    config.optim = config_defaults.optimizer(learning_rate=5e-5, warmup_proportion=0.1)
    config.mesh = config_defaults.mesh()
    return config
