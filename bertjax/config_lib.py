"""Experiment configs: python files with ``get_config(arg=None) -> ml_collections.ConfigDict``.

The command line loads them with ``config_flags.DEFINE_config_file(lock_config=True)``
(`bertjax/main.py`); this module does the same for library code and tests, and checks that a
config has what the training loop reads. Configs are locked, so a mistyped key is an error that
names it instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

# Top-level keys the training loop reads, and the sub-config keys (optim, mesh).
REQUIRED_KEYS = (
    "task",
    "seed",
    "batch_size",
    "total_steps",
    "log_every",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "keep_checkpoints",
)
REQUIRED_OPTIM_KEYS = (
    "name",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "b1",
    "b2",
    "eps",
    "grad_clip_norm",
    "grad_accum_steps",
)
REQUIRED_MESH_KEYS = ("data", "fsdp", "tensor")


def load(path: str | pathlib.Path, overrides: Mapping[str, Any] | None = None):
    """Loads ``path`` (optionally ``path:arg``, passed to get_config), locks it, applies overrides.

    `overrides` maps dotted keys to values, e.g. ``{"optim.learning_rate": 1e-4}``.
    """
    path_str, _, arg = str(path).partition(":")
    file = pathlib.Path(path_str)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")
    spec = importlib.util.spec_from_file_location(f"bertjax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {file} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    apply_overrides(config, overrides or {})
    return config


def unknown_key_message(config: ml_collections.ConfigDict, dotted_key: str) -> str | None:
    """None when `dotted_key` exists in `config`; otherwise an error message naming it."""
    node: Any = config
    parts = dotted_key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "<top level>"
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {'.'.join([*parts[:i], close[0]])!r}?" if close else ""
            return (
                f"unknown config key {dotted_key!r}: {where} has no key {part!r}{hint} "
                f"(keys there: {known})"
            )
        node = node[part]
    return None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets dotted keys in a (locked) config; an unknown key raises a KeyError naming it."""
    for key, value in overrides.items():
        message = unknown_key_message(config, key)
        if message:
            raise KeyError(message)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming the first missing or out-of-range key the loop relies on."""
    for group, keys in (("", REQUIRED_KEYS), ("optim.", REQUIRED_OPTIM_KEYS)):
        for key in keys:
            if unknown_key_message(config, group + key):
                raise ValueError(f"config has no key {group + key!r} (the training loop needs it)")
    for key in REQUIRED_MESH_KEYS:
        if unknown_key_message(config, f"mesh.{key}"):
            raise ValueError(f"config has no key 'mesh.{key}' (the training loop needs it)")

    def positive(key: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.{key}={value!r} must be a positive integer")

    for key in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        positive(key, config[key])
    positive("optim.grad_accum_steps", config.optim.grad_accum_steps)
    if config.total_steps < 1 and config.get("num_train_epochs", 0) <= 0:
        raise ValueError(
            f"config.total_steps={config.total_steps} must be >= 1 (or set num_train_epochs)"
        )
    skip = config.get("skip_nonfinite_steps", 0)
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        raise ValueError(f"config.skip_nonfinite_steps={skip!r} must be an integer >= 0")
    if config.optim.warmup_steps < 0:
        raise ValueError(f"config.optim.warmup_steps={config.optim.warmup_steps} must be >= 0")
    if math.isnan(float(config.optim.learning_rate)):
        raise ValueError("config.optim.learning_rate is NaN")


# ---------------------------------------------------------------------------------------------
# Command-line keys the run would not read.
# ---------------------------------------------------------------------------------------------


def _data(config: ml_collections.ConfigDict, key: str, default: Any = None) -> Any:
    data = config.get("data")
    return data.get(key, default) if isinstance(data, ml_collections.ConfigDict) else default


def _source_is(*sources: str):
    return lambda c: _data(c, "source") is None or _data(c, "source") in sources


# Keys that only some settings read: (key, is it read under this config?, what reads it).
# A key is checked only when the config has it; keys not listed are read by every run that
# has them. Add a row when a config key becomes conditional.
CONDITIONAL_KEYS: tuple[tuple[str, Any, str], ...] = (
    ("data.text_files", _source_is("text_files"), "data.source='text_files'"),
    ("data.text_format", _source_is("text_files"), "data.source='text_files'"),
    ("data.tfds_name", _source_is("tfds"), "data.source='tfds'"),
    ("data.tfds_split", _source_is("tfds"), "data.source='tfds'"),
    ("data.tfds_text_key", _source_is("tfds"), "data.source='tfds'"),
    ("data.prepared_dir", _source_is("prepared"), "data.source='prepared'"),
    (
        "data.tfds_data_dir",
        lambda c: _source_is("tfds")(c) and not _data(c, "data_dir"),
        "data.source='tfds' (GLUE: an empty data.data_dir)",
    ),
    (
        "data.vocab_size",
        lambda c: not _data(c, "vocab_file") and _data(c, "source") != "prepared",
        "a vocabulary trained from the corpus (data.vocab_file empty, data.source not 'prepared')",
    ),
    (
        "data.max_instances_per_row",
        lambda c: bool(_data(c, "pack_sequences", True)),
        "data.pack_sequences=True",
    ),
    (
        "data.dupe_factor",
        lambda c: False,
        "`python -m bertjax.data.prepare` (the offline pipeline), not training",
    ),
    (
        "data.merges_file",
        lambda c: bool(_data(c, "vocab_file")),
        "a GPT-2 vocabulary given by data.vocab_file",
    ),
    ("eval_batches", lambda c: c.get("task") != "glue", "tasks other than glue"),
)


def override_keys(argv: list[str]) -> list[str]:
    """The dotted keys set by ``--config.KEY=V`` / ``--config.KEY V`` arguments in `argv`."""
    keys = []
    for arg in argv:
        if arg.startswith("--config.") or arg.startswith("-config."):
            keys.append(arg.split("config.", 1)[1].split("=", 1)[0])
    return keys


def resolve_command_line(config: ml_collections.ConfigDict, keys: list[str]) -> list[str]:
    """Makes command-line keys mean what the user meant, or fails naming the ones unused.

    `keys` are the dotted keys given on the command line (`override_keys`). Setting
    ``data.text_files`` without ``data.source`` on a config whose source is ``embedded``
    switches the source to ``text_files``. Any other key that the run would not read (the
    `CONDITIONAL_KEYS` table) raises a ValueError naming it and what would read it. Returns
    log lines for what was changed.
    """
    notes = []
    given = set(keys)
    if (
        "data.text_files" in given
        and "data.source" not in given
        and _data(config, "source") == "embedded"
    ):
        config.data.source = "text_files"
        notes.append("data.text_files given: data.source set to 'text_files' (was 'embedded')")
    unused = []
    for key, is_read, reader in CONDITIONAL_KEYS:
        if key in given and unknown_key_message(config, key) is None and not is_read(config):
            unused.append(f"--config.{key} is not read by this run: only {reader} reads it")
    if unused:
        raise ValueError("; ".join(unused) + _current(config))
    return notes


def _current(config: ml_collections.ConfigDict) -> str:
    parts = [f"{k}={_data(config, k)!r}" for k in ("source", "vocab_file", "pack_sequences")]
    return f" (this config: task={config.get('task')!r}, data: {', '.join(parts)})"
