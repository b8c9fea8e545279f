"""From a preset to the list of runs it asks for: every study x condition x arm x seed,
each with its resolved run config and run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.config import ConfigError, deep_merge
from models.run import resolve_run
from studies.preset import Preset, for_study
from studies.registry import STUDIES, explore_study, get_study
from studies.study import Arm, Study


@dataclass(frozen=True)
class PlannedRun:
    study: Study
    preset: Preset
    """The preset as this run's study sees it."""
    run: dict[str, Any]
    """The resolved run config (what ``config.json`` holds)."""
    run_dir: Path

    @property
    def label(self) -> str:
        r = self.run
        return f"{r['study']}/{r['condition']}/{r['model']}/seed{r['seed']}"


@dataclass(frozen=True)
class Selection:
    """Which runs of the preset to act on (empty: all)."""

    studies: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    """Arm names or architectures."""
    tasks: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()


def arms_of(study: Study, preset: Preset) -> list[Arm]:
    """One plain arm per preset architecture, then the study's variants of those."""
    plain = [Arm(name, name) for name in preset.models]
    return plain + [a for a in study.arms if a.architecture in preset.models]


def plan(
    preset: Preset, raw: dict[str, Any], selection: Selection = Selection()
) -> list[PlannedRun]:
    """Every run the selection asks for, in study, condition, arm, seed order. A task
    that no selected study uses gets the generic ``explore`` study."""
    names = list(selection.studies) or list(preset.studies) or list(STUDIES)
    studies = [get_study(name) for name in names]
    used = {c.task for s in studies for c in s.conditions}
    studies += [explore_study(task) for task in selection.tasks if task not in used]
    runs = []
    for study in studies:
        view, selectors = for_study(preset, raw, study.name)
        conditions = _pick(
            study.conditions, selectors.get("conditions"), f"{study.name} conditions"
        )
        arms = _pick(arms_of(study, view), selectors.get("arms"), f"{study.name} arms")
        for condition in conditions:
            if selection.tasks and condition.task not in selection.tasks:
                continue
            task_fields = deep_merge(view.tasks.get(condition.task, {}), condition.task_fields)
            for arm in arms:
                if selection.models and not {arm.name, arm.architecture} & set(selection.models):
                    continue
                model_fields = deep_merge(view.model.get(arm.architecture, {}), arm.model_fields)
                for seed in selection.seeds or view.seeds:
                    keys = {
                        "experiment": view.experiment,
                        "study": study.name,
                        "condition": condition.name,
                        "model": arm.name,
                        "seed": seed,
                    }
                    try:
                        run = resolve_run(
                            keys,
                            condition.task,
                            task_fields,
                            arm.architecture,
                            model_fields,
                            view.param_budget,
                            vars(view.train_for(arm.architecture)),
                        )
                    except (ValueError, TypeError) as error:
                        raise ConfigError(
                            f"{study.name}/{condition.name}/{arm.name}: {error}"
                        ) from error
                    path = Path(
                        view.out_root,
                        view.experiment,
                        study.name,
                        condition.name,
                        arm.name,
                        f"seed{seed}",
                    )
                    runs.append(PlannedRun(study, view, run, path))
    return runs


def _pick(items, names: list[str] | None, what: str):
    if names is None:
        return list(items)
    known = {item.name: item for item in items}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; valid: {sorted(known)}")
    return [known[n] for n in names]
