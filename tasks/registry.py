"""Task registry: build any task by name from a config dict or dataclass.

Each entry maps a snake_case name to ``(ConfigDataclass, TaskClass)``. To add a task:
write the config dataclass and a :class:`tasks.base.Task` subclass that declares its probe
targets and rate maps, and add one line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tasks.alternation import AlternationConfig, AlternationTask
from tasks.base import Task
from tasks.copying import CopyingConfig, CopyingTask
from tasks.graph_nav import GraphNavConfig, GraphNavHexConfig, GraphNavHexTask, GraphNavTask
from tasks.group_word import GroupWordConfig, GroupWordTask
from tasks.interval_timing import IntervalTimingConfig, IntervalTimingTask
from tasks.linear_track import LinearTrackConfig, LinearTrackTask
from tasks.mess3 import Mess3Config, Mess3Task
from tasks.path_integration import PathIntegrationConfig, PathIntegrationTask

TASKS: dict[str, tuple[type, type[Task]]] = {
    "graph_nav": (GraphNavConfig, GraphNavTask),
    "graph_nav_hex": (GraphNavHexConfig, GraphNavHexTask),
    "linear_track": (LinearTrackConfig, LinearTrackTask),
    "alternation": (AlternationConfig, AlternationTask),
    "path_integration": (PathIntegrationConfig, PathIntegrationTask),
    "interval_timing": (IntervalTimingConfig, IntervalTimingTask),
    "copying": (CopyingConfig, CopyingTask),
    "group_word": (GroupWordConfig, GroupWordTask),
    "mess3": (Mess3Config, Mess3Task),
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
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        config = make_config(config_cls, config, f"task {name!r}")
    task = task_cls(config)
    check_declarations(name, task)
    return task


def check_declarations(name: str, task: Task) -> None:
    """A task must say what probes decode and how the census bins its activity."""
    missing = []
    for method in ("probe_targets", "rate_maps"):
        try:
            declared = getattr(task, method)()
        except NotImplementedError:
            missing.append(method)
            continue
        if not isinstance(declared, tuple):
            raise TypeError(f"task {name!r}: {method}() must return a tuple, got {declared!r}")
    if missing:
        raise TypeError(
            f"task {name!r} declares no {' and no '.join(missing)}: implement "
            f"{', '.join(f'{type(task).__name__}.{m}()' for m in missing)} "
            "(see tasks/targets.py; return () if there is nothing to declare)"
        )


def _lookup(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]
