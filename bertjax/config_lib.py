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
    if config.optim.warmup_steps < 0:
        raise ValueError(f"config.optim.warmup_steps={config.optim.warmup_steps} must be >= 0")
    if math.isnan(float(config.optim.learning_rate)):
        raise ValueError("config.optim.learning_rate is NaN")
