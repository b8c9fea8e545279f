"""Synthetic environments and sequence tasks -> token sequences + ground-truth latents.

Registered tasks (``build_task(name, config)``; each module's docstring has the details):
graph_nav, graph_nav_hex, linear_track, alternation, path_integration, interval_timing,
copying, group_word, mess3. ``materialize(task, n, seed)`` caches a task as a
HuggingFace dataset. :mod:`tasks.reference` holds the reference predictors a network is
compared with (``Task.reference_predictors``).
"""

from tasks.base import IGNORE_INDEX, Batch, Curve, Task
from tasks.materialize import dataset_batch, materialize
from tasks.registry import TASKS, build_task, task_config
from tasks.targets import (
    ArenaMaps,
    EnvironmentMaps,
    GraphMaps,
    MapSpec,
    ProbeTarget,
    RouteMaps,
    TimeMaps,
    TrackMaps,
    TuningMaps,
)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "ArenaMaps",
    "Batch",
    "Curve",
    "EnvironmentMaps",
    "GraphMaps",
    "MapSpec",
    "ProbeTarget",
    "RouteMaps",
    "Task",
    "TimeMaps",
    "TrackMaps",
    "TuningMaps",
    "build_task",
    "dataset_batch",
    "materialize",
    "task_config",
]
