"""The run manifest, ``WORKDIR/run.json``: everything needed to use a run without its config.

The training loop writes it (process 0) for every task once the data and model are built; the
loaders (`bertjax.inference.load_run`, `bertjax.predict`, `bertjax.generate_cli`, the server)
read it and the files it names, all inside the run directory, so a run directory copied to
another machine works with nothing else. Format version 1::

    {"format_version": 1,
     "task": "classify" | "glue" | "bert_pretrain" | "causal_lm" | "squad" | "ner",
     "problem_type": "single_label" | "multi_label" | "regression" | null,
     "label_names": ["negative", "positive"] | null,   # index order of the logits
     "model": {...ModelConfig.to_dict()...},
     "tokenizer": {"type": "wordpiece", "vocab_file": "vocab.txt", "do_lower_case": true}
                | {"type": "byte_bpe", "directory": "tokenizer"},
     "max_seq_length": 128,
     "data": {"text_column": ..., "text_pair_column": ..., "label_column": ..., "glue_task": ...},
     "best_metric": "eval/accuracy" | null,
     "init_from": "..."}

Older runs are read as legacy manifests: a GLUE run's ``glue_run.json`` (+ vocab.txt) and a
causal-LM run's ``model_config.json`` (+ tokenizer/).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from absl import logging

RUN_FILE = "run.json"
FORMAT_VERSION = 1
LEGACY_GLUE_FILE = "glue_run.json"
LEGACY_LM_FILE = "model_config.json"
VOCAB_FILE = "vocab.txt"  # a WordPiece vocabulary, copied into the run directory
BPE_DIR = "tokenizer"  # a byte-level BPE tokenizer's files, in the run directory
TASKS = ("classify", "glue", "bert_pretrain", "causal_lm", "squad", "ner")
PROBLEM_TYPES = ("single_label", "multi_label", "regression")
REQUIRED = ("format_version", "task", "model", "tokenizer", "max_seq_length")


class ManifestError(ValueError):
    """A run directory has no usable manifest; the message names the file and the field."""


def write_manifest(workdir: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Validates `manifest` and writes it to WORKDIR/run.json atomically; returns the path.

    Only one process may call it (the training loop calls it on process 0).
    """
    path = pathlib.Path(workdir) / RUN_FILE
    validate(manifest, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{RUN_FILE}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


def read_manifest(workdir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the run in `workdir` (run.json, else a legacy glue_run.json /
    model_config.json turned into a format-1 manifest)."""
    root = pathlib.Path(workdir)
    path = root / RUN_FILE
    if path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from None
        validate(manifest, str(path))
        return manifest
    if (root / LEGACY_GLUE_FILE).is_file():
        return _from_legacy_glue(root / LEGACY_GLUE_FILE)
    if (root / LEGACY_LM_FILE).is_file() and (root / BPE_DIR).is_dir():
        return _from_legacy_lm(root / LEGACY_LM_FILE)
    if not root.is_dir():
        raise ManifestError(f"{root} is not a directory (expected a bertjax run directory)")
    raise ManifestError(
        f"{path} not found: {root} is not a bertjax run directory (the training loop writes "
        f"{RUN_FILE} there; older GLUE runs have {LEGACY_GLUE_FILE})"
    )


def validate(manifest: Any, where: str) -> None:
    """Raises ManifestError naming `where` and the field when `manifest` breaks format 1."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {missing}")
    version = manifest["format_version"]
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{where}: format_version {version!r}; this bertjax reads version {FORMAT_VERSION}"
        )
    if manifest["task"] not in TASKS:
        raise ManifestError(f"{where}: task {manifest['task']!r} is not one of {list(TASKS)}")
    problem = manifest.get("problem_type")
    if problem is not None and problem not in PROBLEM_TYPES:
        raise ManifestError(
            f"{where}: problem_type {problem!r} is not one of {list(PROBLEM_TYPES)} or null"
        )
    names = manifest.get("label_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise ManifestError(f"{where}: label_names must be a list of strings or null")
    tok = manifest["tokenizer"]
    if not isinstance(tok, dict) or tok.get("type") not in ("wordpiece", "byte_bpe"):
        raise ManifestError(f"{where}: tokenizer.type must be 'wordpiece' or 'byte_bpe'")
    needed = ("vocab_file", "do_lower_case") if tok["type"] == "wordpiece" else ("directory",)
    for key in needed:
        if key not in tok:
            raise ManifestError(f"{where}: tokenizer.{key} is missing")
    if not isinstance(manifest["model"], dict):
        raise ManifestError(f"{where}: model must be a JSON object (ModelConfig fields)")
    if not isinstance(manifest["max_seq_length"], int) or manifest["max_seq_length"] < 1:
        raise ManifestError(f"{where}: max_seq_length must be a positive integer")


def save_tokenizer(workdir: str | os.PathLike, tokenizer: Any) -> dict[str, Any]:
    """Copies the tokenizer's files into `workdir`; returns the manifest's "tokenizer" entry.

    A WordPiece tokenizer (`bertjax.data.tokenizer`) becomes WORKDIR/vocab.txt, a byte-level
    BPE tokenizer (`bertjax.data.bpe`) WORKDIR/tokenizer/. Files already there with the same
    contents (a vocabulary trained into the workdir) are left as they are.
    """
    root = pathlib.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    if hasattr(tokenizer, "save_vocab"):  # WordPiece
        path = root / VOCAB_FILE
        wanted = "\n".join(tokenizer.vocab) + "\n"
        if not (path.is_file() and path.read_text(encoding="utf-8") == wanted):
            tokenizer.save_vocab(str(path))
        return {"type": "wordpiece", "vocab_file": VOCAB_FILE,
                "do_lower_case": bool(tokenizer.do_lower_case)}  # fmt: skip
    if hasattr(tokenizer, "eot_id"):  # byte-level BPE
        directory = root / BPE_DIR
        if not (directory / "tokenizer.json").is_file():
            tokenizer.save(directory)
        return {"type": "byte_bpe", "directory": BPE_DIR}
    raise TypeError(f"cannot save a tokenizer of type {type(tokenizer).__name__} with a run")


def build_manifest(
    config: Any,
    model_config: Any,
    tokenizer_entry: dict[str, Any],
    **task_fields: Any,
) -> dict[str, Any]:
    """A format-1 manifest from the run's config and model; `task_fields` (problem_type,
    label_names, data, best_metric) come from the task (`TaskData.manifest`)."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "task": str(config.task),
        "problem_type": None,
        "label_names": None,
        "model": model_config.to_dict(),
        "tokenizer": tokenizer_entry,
        "max_seq_length": int(config.data.max_seq_length),
        "data": {},
        "best_metric": None,
        "init_from": str(config.get("init_from", "") or ""),
    }
    unknown = set(task_fields) - set(manifest)
    if unknown:
        raise ValueError(f"unknown run.json field(s) from the task: {sorted(unknown)}")
    manifest.update(task_fields)
    return manifest


def write_run(workdir: str | os.PathLike, config: Any, model_config: Any, data: Any) -> str | None:
    """What the training loop calls: the tokenizer saved with the run, then run.json.

    `data` is the task's `TaskData`: `extras["tokenizer"]` and the task's own `manifest` fields.
    Tasks that bertjax.inference cannot load (registered from outside, or without a tokenizer)
    get no run.json: returns None then, else the manifest's path.
    """
    tokenizer = data.extras.get("tokenizer")
    if config.task not in TASKS or tokenizer is None:
        # A task registered outside bertjax (tasks.register): bertjax.inference cannot rebuild
        # it, so there is no manifest to write; said once, not an error.
        reason = "no tokenizer in TaskData.extras" if tokenizer is None else "not a bertjax task"
        logging.info("run.json not written for task %r (%s)", config.task, reason)
        return None
    entry = save_tokenizer(workdir, tokenizer)
    manifest = build_manifest(config, model_config, entry, **dict(data.manifest))
    return write_manifest(workdir, manifest)


# ---------------------------------------------------------------------------------------------
# Legacy manifests
# ---------------------------------------------------------------------------------------------


def _from_legacy_glue(path: pathlib.Path) -> dict[str, Any]:
    from bertjax.data import glue

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        task = glue.get_task(old["task"])
        manifest = {
            "format_version": FORMAT_VERSION,
            "task": "glue",
            "problem_type": "regression" if task.is_regression else "single_label",
            "label_names": None if task.labels is None else list(task.labels),
            "model": old["model"],
            "tokenizer": {
                "type": "wordpiece",
                "vocab_file": old.get("vocab_file", VOCAB_FILE),
                "do_lower_case": bool(old["do_lower_case"]),
            },  # fmt: skip
            "max_seq_length": int(old["max_seq_length"]),
            "data": {"glue_task": task.name},
            "best_metric": None,
            "init_from": old.get("init_from", ""),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: not a valid legacy GLUE run file ({e!r})") from None
    validate(manifest, str(path))
    return manifest


def _from_legacy_lm(path: pathlib.Path) -> dict[str, Any]:
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    manifest = {
        "format_version": FORMAT_VERSION,
        "task": "causal_lm",
        "problem_type": None,
        "label_names": None,
        "model": model,
        "tokenizer": {"type": "byte_bpe", "directory": BPE_DIR},
        "max_seq_length": int(model.get("max_position_embeddings", 1024)),
        "data": {},
        "best_metric": None,
        "init_from": "",
    }
    validate(manifest, str(path))
    return manifest
