"""Load a run directory: model, params, tokenizer and labels from ``run.json`` alone."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from bertjax.inference import manifest as manifest_lib


@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready for `featurize` / `forward` / `postprocess` or generation.

    manifest: run.json as read (`bertjax.inference.manifest`).
    model_config: the `bertjax.models.ModelConfig` the run trained.
    module: the Flax module (`models.build(model_config)`).
    params: the parameter tree (numpy arrays on the host).
    tokenizer: WordPieceTokenizer or ByteBPETokenizer, from the files in the run directory.
    label_names: the labels in logit order (None for regression and LM runs).
    problem_type: "single_label" | "multi_label" | "regression" | None.
    max_seq_length: the length the run trained with (inputs are truncated to it).
    workdir, checkpoint: where the run and its params were read from.
    """

    manifest: dict[str, Any]
    model_config: Any
    module: Any
    params: Any
    tokenizer: Any
    label_names: list[str] | None
    problem_type: str | None
    max_seq_length: int
    workdir: str = ""
    checkpoint: str = ""


def resolve_checkpoint(workdir: str | os.PathLike, checkpoint: str = "") -> str:
    """The path `restore_params` reads: "" = the run (best/ if present, else the latest
    training checkpoint); a step number = that step in checkpoints/ (or best/); else a path."""
    root = pathlib.Path(workdir)
    if not checkpoint:
        return str(root)
    if checkpoint.isdigit():
        for sub in ("checkpoints", "best"):
            if (root / sub / checkpoint).is_dir():
                return str(root / sub / checkpoint)
        raise FileNotFoundError(f"no checkpoint of step {checkpoint} in {root}/checkpoints or best")
    path = pathlib.Path(checkpoint)
    if not path.exists() and (root / path).exists():
        path = root / path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    return str(path)


def load_tokenizer(workdir: str | os.PathLike, entry: dict[str, Any]) -> Any:
    """The tokenizer a manifest's "tokenizer" entry names, read from the run directory."""
    root = pathlib.Path(workdir)
    if entry["type"] == "wordpiece":
        from bertjax.data.tokenizer import WordPieceTokenizer

        path = root / entry["vocab_file"]
        if not path.is_file():
            raise manifest_lib.ManifestError(f"{path} not found (run.json's tokenizer.vocab_file)")
        return WordPieceTokenizer.from_vocab_file(str(path), do_lower_case=entry["do_lower_case"])
    from bertjax.data.bpe import ByteBPETokenizer

    directory = root / entry["directory"]
    if not directory.is_dir():
        raise manifest_lib.ManifestError(f"{directory} not found (run.json's tokenizer.directory)")
    return ByteBPETokenizer.from_dir(str(directory))


def load_run(
    workdir: str | os.PathLike, checkpoint: str = "", *, dtype: str | None = None
) -> LoadedRun:
    """Loads the run in `workdir` from its manifest alone.

    checkpoint: "" (best/ if the run has one, else its latest training checkpoint), a step
      number, or a checkpoint path.
    dtype: compute dtype to use instead of the run's (e.g. "float32" on a CPU).
    """
    from bertjax import checkpointing, models

    manifest = manifest_lib.read_manifest(workdir)
    try:
        cfg = models.ModelConfig.from_dict(manifest["model"])
    except (TypeError, ValueError) as e:
        raise manifest_lib.ManifestError(f"{workdir}: run.json's model is invalid ({e})") from e
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    tokenizer = load_tokenizer(workdir, manifest["tokenizer"])
    if tokenizer.vocab_size > cfg.vocab_size:
        raise manifest_lib.ManifestError(
            f"{workdir}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"embedding table only {cfg.vocab_size} rows"
        )
    path = resolve_checkpoint(workdir, checkpoint)
    params = checkpointing.restore_params(path)
    label_names = manifest.get("label_names")
    if label_names is not None and cfg.head in ("classification", "token_classification"):
        if len(label_names) != cfg.num_labels:
            raise manifest_lib.ManifestError(
                f"{workdir}: run.json has {len(label_names)} label_names but the model "
                f"{cfg.num_labels} outputs"
            )
    return LoadedRun(
        manifest=manifest,
        model_config=cfg,
        module=models.build(cfg),
        params=params,
        tokenizer=tokenizer,
        label_names=None if label_names is None else list(label_names),
        problem_type=manifest.get("problem_type"),
        max_seq_length=int(manifest["max_seq_length"]),
        workdir=str(workdir),
        checkpoint=path,
    )
