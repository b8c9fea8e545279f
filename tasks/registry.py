"""Task registry: build any task by name from a config dict or dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any

from tasks.base import Task
from tasks.graph_nav import GraphNavConfig, GraphNavTask

TASKS: dict[str, tuple[type, type[Task]]] = {
    "graph_nav": (GraphNavConfig, GraphNavTask),
}


def make_config(cls: type, fields: dict[str, Any] | None, what: str):
    """Build dataclass ``cls`` from ``fields``, naming any unknown field and the valid ones."""
    fields = dict(fields or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(f"unknown {what} config field(s) {unknown}; valid: {sorted(valid)}")
    return cls(**fields)


def task_config(name: str, fields: dict[str, Any] | None = None):
    """The config dataclass of task ``name`` filled from ``fields``."""
    return make_config(_lookup(name)[0], fields, f"task {name!r}")


def build_task(name: str, config: Any = None) -> Task:
    """Build task ``name``; ``config`` is its config dataclass, a dict of fields, or None."""
    config_cls, task_cls = _lookup(name)
    if not isinstance(config, config_cls):
        config = make_config(config_cls, config, f"task {name!r}")
    return task_cls(config)


def _lookup(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]
