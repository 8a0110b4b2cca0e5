"""A run directory -> the backend that serves it, through `bertjax.inference.load_run`
(run.json, or the glue_run.json of older GLUE runs): a GPT run generates, a squad / ner run
answers / tags, any other BERT-family run classifies and embeds."""

from __future__ import annotations

import os
from typing import Any

from bertjax.serve.backend import EncoderBackend
from bertjax.serve.generation import GenerationBackend
from bertjax.serve.spans import SPAN_TASKS, SpanBackend


def load_backend(
    workdir: str,
    checkpoint: str = "",
    dtype: str | None = None,
    *,
    max_new_tokens: int = 256,
    max_prompt_tokens: int | None = None,
) -> Any:
    """The backend of a run directory (params from `checkpoint` when given).

    dtype: a compute dtype to serve in instead of the run's (e.g. "float32" on a CPU).
    max_new_tokens / max_prompt_tokens: a GPT run's generation limits (`GenerationBackend`).
    Raises FileNotFoundError / ManifestError naming what is missing or wrong.
    """
    from bertjax.inference import load_run

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} is not a directory")
    run = load_run(workdir, checkpoint, dtype=dtype)
    task = run.manifest.get("task")
    if run.model_config.model_type == "gpt2":
        return GenerationBackend(
            run.module,
            run.params,
            run.model_config,
            run.tokenizer,
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            name=workdir,
        )
    if task in SPAN_TASKS:
        return SpanBackend(
            run.module,
            run.params,
            run.model_config,
            run.tokenizer,
            max_seq_length=run.max_seq_length,
            task=task,
            label_names=run.label_names,
            data=run.manifest.get("data"),
            name=workdir,
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
        task=task,
        manifest=run.manifest,
    )
