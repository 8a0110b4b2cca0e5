"""Fingerprints of a run's input files, so that a resumed run notices files changed meanwhile.

`fingerprint(config)` maps every local input file the config names (corpus files, vocabulary,
prepared shards, GLUE TSVs) to its size and SHA-256. The training loop stores that map in each
checkpoint's data state (key ``input_files``) and, on resuming, `check_unchanged` names every
file removed, changed or added since: the data position in the checkpoint would otherwise
point into different data without a word.
"""

from __future__ import annotations

import glob
import hashlib
import os
from typing import Any

import ml_collections

STATE_KEY = "input_files"


class InputsChangedError(RuntimeError):
    """An input file of the run changed, appeared or disappeared since the checkpoint."""


def _expand(spec: str) -> list[str]:
    """Files of a comma-separated list of paths / globs / directories (local paths only)."""
    files: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part or "://" in part:
            continue
        for path in sorted(glob.glob(part)) or [part]:
            if os.path.isdir(path):
                for root, _, names in os.walk(path):
                    files.extend(os.path.join(root, n) for n in names)
            else:
                files.append(path)
    return files


def input_files(config: ml_collections.ConfigDict) -> list[str]:
    """The local files the run reads, by the data keys that name them."""
    data = config.get("data")
    if not isinstance(data, ml_collections.ConfigDict):
        return []
    source = data.get("source")
    specs = [data.get("vocab_file", ""), data.get("merges_file", "")]
    if source == "text_files":
        specs.append(data.get("text_files", ""))
    if source == "prepared":
        specs.append(data.get("prepared_dir", ""))
    if source is None:  # fine-tuning tasks: a directory of TSV/JSON files
        specs.append(data.get("data_dir", ""))
    files = {os.path.abspath(f) for spec in specs if spec for f in _expand(spec)}
    return sorted(files)


def _file_fingerprint(path: str) -> str:
    if not os.path.exists(path):
        return "missing"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return f"{os.path.getsize(path)}:{digest.hexdigest()[:32]}"


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{absolute path: "size:sha256 prefix"} of every input file (see `input_files`)."""
    return {path: _file_fingerprint(path) for path in input_files(config)}


def check_unchanged(saved: dict[str, Any], current: dict[str, str], checkpoint: str) -> None:
    """Raises InputsChangedError naming every file that differs between `saved` and now."""
    removed = sorted(p for p in saved if current.get(p, "missing") == "missing")
    changed = sorted(
        p for p in saved if p not in removed and p in current and current[p] != saved[p]
    )
    added = sorted(p for p in current if p not in saved)
    if not (removed or changed or added):
        return
    lines = [f"the input files changed since {checkpoint} was saved:"]
    lines += [f"  removed: {p}" for p in removed]
    lines += [f"  changed: {p} (was {saved[p]}, now {current[p]})" for p in changed]
    lines += [f"  added: {p}" for p in added]
    lines.append(
        "Resuming would continue from a data position in other data. Restore the files, or "
        "start a new --workdir (optionally with config.init_from pointing at this one)."
    )
    raise InputsChangedError("\n".join(lines))
