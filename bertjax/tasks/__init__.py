"""Training objectives by name: `tasks.get(config.task)` returns a `Task` (see `tasks/base.py`).

Each objective lives in its own module that defines a module-level ``TASK``. Modules are imported
on first use, so a task whose dependencies are missing does not break the others.
"""

from __future__ import annotations

import importlib

from bertjax.tasks.base import HostInfo, Task, TaskData

__all__ = ["HostInfo", "Task", "TaskData", "get", "names", "register"]

# name -> module that defines `TASK`. A new objective adds one line here.
_MODULES: dict[str, str] = {
    "bert_pretrain": "bertjax.tasks.bert_pretrain",
    "glue": "bertjax.tasks.glue",
    "classify": "bertjax.tasks.classify",
    "causal_lm": "bertjax.tasks.causal_lm",
    "squad": "bertjax.tasks.squad",
    "ner": "bertjax.tasks.ner",
}
_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Registers a task under `task.name` (also usable for tasks defined outside bertjax)."""
    _REGISTRY[task.name] = task
    return task


def names() -> list[str]:
    """Every task name `get` accepts."""
    return sorted(set(_MODULES) | set(_REGISTRY))


def get(name: str) -> Task:
    """The task called `name`; an unknown name is an error listing the known ones."""
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise ValueError(f"unknown task {name!r} (config.task); known tasks: {names()}")
        module = importlib.import_module(_MODULES[name])
        register(module.TASK)
    return _REGISTRY[name]
