"""GLUE fine-tuning (BERT paper recipe): one config for every task, chosen after the colon.

    python -m bertjax.main --config=configs/glue.py:stsb --workdir=runs/stsb \
        --config.init_from=/path/to/hf_or_bertjax_checkpoint

Tasks: cola, sst2, mrpc, stsb, qqp, mnli (matched + mismatched dev), qnli, rte, wnli.
Data come from TensorFlow Datasets (glue/TASK) unless `config.data.data_dir` names a GLUE TSV
directory (TASK/train.tsv, TASK/dev.tsv, ...). Eval runs at the end of every epoch; the params
with the best dev value of the task's metric are kept in WORKDIR/best/ (see bertjax/tasks/glue.py).
"""

import ml_collections

from bertjax import config_defaults

# The BERT paper's fine-tuning grid (Appendix A.3); launch/glue_sweep.py runs all of it.
PAPER_LEARNING_RATES = (5e-5, 4e-5, 3e-5, 2e-5)
PAPER_BATCH_SIZES = (16, 32)
PAPER_EPOCHS = (2, 3, 4)


def get_config(task: str = "mrpc") -> ml_collections.ConfigDict:
    """Fine-tuning config of GLUE task `task` (e.g. `--config=configs/glue.py:stsb`)."""
    from bertjax.data import glue  # validates the task name, listing the valid ones

    glue_task = glue.get_task(task)
    if "train" not in glue_task.files:
        trainable = sorted(name for name, t in glue.TASKS.items() if "train" in t.files)
        raise ValueError(
            f"GLUE task {task!r} has no training set (AX is scored by an MNLI model through "
            f"bertjax.predict); tasks to fine-tune: {trainable}"
        )
    config = ml_collections.ConfigDict()
    config.task = "glue"
    config.seed = 0

    # Where the pretrained encoder comes from: a bertjax workdir / checkpoint directory
    # (pretraining heads dropped) or a Hugging Face checkpoint directory (config.json +
    # model.safetensors). "" trains config.model from scratch (only sensible for tests).
    config.init_from = ""

    # Model: sizes come from init_from's checkpoint. config.model.preset ("" = take the
    # checkpoint's) and vocab_size (0 = the tokenizer's / checkpoint's) are checked against it.
    config.model = config_defaults.finetune_model()

    config.data = ml_collections.ConfigDict()
    config.data.task = glue_task.name
    config.data.data_dir = ""  # GLUE TSV directory; "" = TensorFlow Datasets glue/TASK
    config.data.tfds_data_dir = ""  # "" = TFDS's default (~/tensorflow_datasets)
    # vocab.txt; "" = init_from's (HF dir or bertjax workdir, found next to the checkpoint).
    config.data.vocab_file = ""
    config.data.do_lower_case = True
    config.data.max_seq_length = 128
    # Several examples per row (bertjax/data/example_packing.py): the same examples and
    # per-example losses per step in fewer rows, so short texts do not pay for padding.
    config.data.pack_sequences = True
    config.data.bad_rows = "error"  # "error" | "skip" (malformed TSV rows; skips are logged)

    # Recipe (BERT paper defaults; the sweep varies learning_rate, batch_size, epochs).
    config_defaults.finetune_schedule(config)
    config.skip_nonfinite_steps = 0  # > 0: skip up to so many NaN/Inf steps (no update)

    # Warmup: 10% of the steps (replaces warmup_steps), then linear decay.
    config.optim = config_defaults.optimizer(learning_rate=2e-5, warmup_proportion=0.1)

    config.mesh = config_defaults.mesh()
    return config
