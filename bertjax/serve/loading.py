"""A run directory -> the backend that serves it.

Runs with a manifest (`WORKDIR/run.json`, `bertjax.inference`) load through
`bertjax.inference.load_run`; GLUE runs of earlier versions (`glue_run.json` + `vocab.txt`)
still load through the file they have.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bertjax.serve.backend import EncoderBackend


def load_backend(workdir: str, checkpoint: str = "", dtype: str | None = None) -> Any:
    """The backend of a run directory (params from `checkpoint` when given).

    dtype: a compute dtype to serve in instead of the run's (e.g. "float32" on a CPU).
    Raises FileNotFoundError naming what is missing when `workdir` is not a run directory.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} is not a directory")
    try:
        from bertjax.inference import loader, manifest
    except ImportError:  # a checkout without bertjax.inference: GLUE runs only
        loader = manifest = None
    if manifest is not None and os.path.isfile(os.path.join(workdir, manifest.RUN_FILE)):
        run = loader.load_run(workdir, checkpoint)
        task = run.manifest.get("task")
        if task == "causal_lm":
            from bertjax.serve.generation import GenerationBackend

            return GenerationBackend.from_loaded_run(run, name=workdir)
        cfg = run.model_config
        module = run.module
        if dtype is not None and dtype != cfg.dtype:
            from bertjax import models

            cfg = cfg.replace(dtype=dtype)
            module = models.build(cfg)
        return EncoderBackend(
            module,
            run.params,
            cfg,
            run.tokenizer,
            max_seq_length=run.max_seq_length,
            label_names=run.label_names,
            problem_type=run.problem_type,
            name=workdir,
        )
    return _load_glue_run(workdir, checkpoint, dtype)


def _load_glue_run(workdir: str, checkpoint: str, dtype: str | None) -> EncoderBackend:
    from bertjax import checkpointing, models
    from bertjax.data import glue
    from bertjax.data.tokenizer import WordPieceTokenizer

    path = os.path.join(workdir, "glue_run.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{workdir} has neither run.json nor glue_run.json: --workdir must be the directory "
            "of a bertjax fine-tuning run"
        )
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    cfg = models.ModelConfig.from_dict(run["model"])
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    task = glue.get_task(run["task"])
    tokenizer = WordPieceTokenizer.from_vocab_file(
        os.path.join(workdir, run["vocab_file"]), do_lower_case=run["do_lower_case"]
    )
    return EncoderBackend(
        models.build(cfg),
        checkpointing.restore_params(checkpoint or workdir),
        cfg,
        tokenizer,
        max_seq_length=int(run["max_seq_length"]),
        label_names=list(task.labels) if task.labels else None,
        problem_type="regression" if task.is_regression else "single_label",
        name=workdir,
    )
