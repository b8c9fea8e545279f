"""What a study is: one scientific question, answered by training every model arm on every
condition (a task configuration), over seeds, and analysing each run the same way.

A study declares its conditions, the model arms it compares (by default one per
architecture of the preset; extra arms add model variants such as positional schemes or
depths), the convergence gate that says when a run counts as trained, the headline metrics
that go into ``runs.csv``, optional study-specific analyses, and its figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.tables import Gate
from studies.causal import Steering


@dataclass(frozen=True)
class Condition:
    """A task configuration: ``task`` with ``task_fields`` over the preset's
    ``[tasks.<task>]`` fields."""

    name: str
    task: str
    task_fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Arm:
    """A model compared in a study: ``architecture`` (a registered model) with
    ``model_fields`` over the preset's ``[model.<architecture>]`` fields."""

    name: str
    architecture: str
    model_fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """What a study-specific analysis gets: one trained, probed run."""

    run_dir: Path
    run: dict[str, Any]
    """The resolved run config."""
    preset: Any
    """The preset as the study sees it (:class:`studies.preset.Preset`)."""


Analysis = Callable[[RunContext], dict[str, list[dict[str, Any]]]]
"""A study-specific analysis of one run: ``analysis(context) -> {table: rows}`` with
tables ``curves`` (source, curve, hook, x, value, count), ``metrics`` (metric, hook, value)
or ``points`` (free columns; e.g. a probe's projection of held-out samples)."""


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    """One sentence: what the study asks."""
    conditions: tuple[Condition, ...]
    gate: Gate | None
    headline: tuple[str, ...]
    """Final eval metrics (and census/analysis metrics) reported in ``runs.csv``."""
    arms: tuple[Arm, ...] = ()
    """Model variants beyond one plain arm per preset architecture."""
    analyses: tuple[Analysis, ...] = ()
    figure: str | None = None
    """Key of the study's figure in :data:`analysis.figures.FIGURES` (default: its name)."""
    steering: Steering | None = None
    """The causal stage's steering test (ablation runs for every study)."""

    def condition(self, name: str) -> Condition:
        for condition in self.conditions:
            if condition.name == name:
                return condition
        raise ValueError(
            f"study {self.name!r} has no condition {name!r}; valid: "
            f"{[c.name for c in self.conditions]}"
        )
