"""A run directory -> the backend that serves it, through `bertjax.inference.load_run`
(run.json, or the glue_run.json of older GLUE runs)."""

from __future__ import annotations

import os
from typing import Any

from bertjax.serve.backend import EncoderBackend


def load_backend(workdir: str, checkpoint: str = "", dtype: str | None = None) -> Any:
    """The backend of a run directory (params from `checkpoint` when given).

    dtype: a compute dtype to serve in instead of the run's (e.g. "float32" on a CPU).
    Raises FileNotFoundError / ManifestError naming what is missing or wrong.
    """
    from bertjax.inference import load_run

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} is not a directory")
    run = load_run(workdir, checkpoint, dtype=dtype)
    if run.model_config.model_type != "bert":
        raise ValueError(
            f"{workdir}: a {run.manifest.get('task')} run of model_type "
            f"{run.model_config.model_type!r}; bertjax.serve serves BERT-family runs "
            "(/v1/generate for GPT runs is not implemented yet: use bertjax.generate_cli)"
        )
    return EncoderBackend(
        run.module,
        run.params,
        run.model_config,
        run.tokenizer,
        max_seq_length=run.max_seq_length,
        label_names=run.label_names,
        problem_type=run.problem_type,
        name=workdir,
        manifest=run.manifest,
    )
