"""Token classification: named-entity recognition on CoNLL-2003 or any token/tag file.

    python -m bertjax.main --config=configs/ner.py --workdir=runs/conll \
      --config.init_from=/path/to/hf_or_bertjax_checkpoint \
      --config.data.train_file=train.txt --config.data.validation_file=dev.txt \
      --config.data.test_file=test.txt

Token in the first column, tag in the last; IOB1 / IOB2 / IOBES converted to IOB2; entity F1 as
seqeval's default mode; WORKDIR/predictions_{eval,test}.conll. Then
`python -m bertjax.predict --workdir=runs/conll --input=texts.jsonl --output=entities.jsonl`.
See docs/qa_ner.md and bertjax/tasks/ner.py.
"""

import ml_collections

from bertjax import config_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "ner"
    config.seed = 0
    config.init_from = ""  # HF checkpoint dir or bertjax run / checkpoint; "" = from scratch
    config.best_metric = ""  # "" = eval/f1

    config.model = config_defaults.finetune_model()

    config.data = ml_collections.ConfigDict()
    config.data.train_file = ""
    config.data.validation_file = ""  # "" = no evaluation
    config.data.test_file = ""  # evaluated too (logged as test/...)
    config.data.tag_scheme = "auto"  # auto | iob1 | iob2 | iobes (all converted to IOB2)
    config.data.max_train_sentences = 0  # >0: the first N training sentences only
    config.data.max_eval_sentences = 0  # >0: the first N sentences of each eval file only
    config.data.num_labels = 0  # only for --dry_run (no data is read): tags incl. O
    config.data.vocab_file = ""  # "" = init_from's vocab.txt
    config.data.do_lower_case = True  # must match the checkpoint (cased models: False)
    config.data.max_seq_length = 128
    # Packed batches (bertjax/data/example_packing.py): a step's sentences back to back in as few
    # rows as hold them; the same per-token loss, without paying for padding.
    config.data.pack_sequences = True

    config_defaults.finetune_schedule(config)

    config.optim = config_defaults.optimizer(learning_rate=5e-5, warmup_proportion=0.1)
    config.mesh = config_defaults.mesh()
    return config
