"""Presets (``configs/<name>.toml``): which studies, models and seeds to run, and with what
budget. A ``[study.<name>]`` table overrides any top-level field for that study (its own
parameter budget, training steps, task sizes) and may narrow its ``conditions`` and
``arms``; every model of a study always gets the same budget, data and analysis.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.census import CensusConfig
from lab.config import ConfigError, apply_overrides, deep_merge, from_dict, load_toml, require
from models.train import TUNABLE, TrainConfig
from probes.config import ProbeConfig
from studies.causal import CausalConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Preset:
    """Everything an experiment needs."""

    experiment: str = "default"
    """Name of the output folder ``<out_root>/<experiment>/`` (letters, digits, . _ -)."""
    studies: list[str] = field(default_factory=list)
    """Studies ``make paper`` runs (empty: all registered studies)."""
    models: list[str] = field(default_factory=lambda: ["transformer", "mamba", "lstm"])
    """Architectures compared (each study adds its own variants of them)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    param_budget: int | None = None
    """Every model is resized (d_model) to this many parameters, within 10%."""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-task config fields, ``[tasks.<name>]``."""
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-architecture config fields, ``[model.<name>]``."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training budget every model gets."""
    tune: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-architecture optimiser settings, ``[tune.<model>]``: only the keys in
    ``models.train.TUNABLE``; the budget (steps, batch size) and the data stay shared."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    census: CensusConfig = field(default_factory=CensusConfig)
    causal: CausalConfig = field(default_factory=CausalConfig)
    study: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-study overrides, ``[study.<name>]``: any field above, plus ``conditions`` and
    ``arms`` (lists of names) to run only some of the study's."""
    out_root: str = "runs"

    def __post_init__(self):
        require(
            SAFE_NAME.fullmatch(self.experiment) is not None,
            f"experiment must be one path component of letters, digits, '.', '_' or '-' "
            f"(not starting with '.' or '-'), got {self.experiment!r}",
        )
        require(bool(self.models), "models must name at least one architecture")
        require(bool(self.seeds), "seeds must list at least one seed")
        require(
            self.param_budget is None or self.param_budget > 0,
            f"param_budget must be positive, got {self.param_budget}",
        )
        for model, fields in self.tune.items():
            bad = sorted(set(fields) - TUNABLE)
            require(
                not bad,
                f"[tune.{model}] may set only {sorted(TUNABLE)}, not {bad}: steps, batch "
                "size and data are shared so that every model gets the same budget",
            )

    def experiment_dir(self) -> Path:
        return Path(self.out_root) / self.experiment

    def train_for(self, architecture: str) -> TrainConfig:
        """``[train]`` with the architecture's ``[tune.<architecture>]``."""
        return dataclasses.replace(self.train, **self.tune.get(architecture, {}))


STUDY_SELECTORS = ("conditions", "arms")


def for_study(preset: Preset, raw: dict[str, Any], name: str) -> tuple[Preset, dict[str, Any]]:
    """The preset as study ``name`` sees it (its ``[study.<name>]`` table merged over the
    top level) and the table's selectors (``conditions``, ``arms``)."""
    overrides = dict(raw.get("study", {}).get(name, {}))
    selectors = {k: overrides.pop(k) for k in STUDY_SELECTORS if k in overrides}
    for key in ("study", "studies", "experiment", "out_root"):
        if key in overrides:
            raise ConfigError(f"[study.{name}] cannot set {key!r}")
    merged = deep_merge(raw, overrides)
    merged.pop("study", None)
    return from_dict(Preset, merged, f"preset [study.{name}]"), selectors


def preset_path(name_or_path: str) -> Path:
    """``configs/<name>.toml``, or the path given; an unknown preset lists the known ones."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(f"no preset {name_or_path!r} ({path}); known presets: {known}")
    return path


def load_preset(name_or_path: str, overrides: list[str] = ()) -> tuple[Preset, dict[str, Any]]:
    """(validated Preset, raw dict) of ``configs/<name>.toml`` or a path, with overrides.
    The raw dict keeps the ``[study.*]`` tables for :func:`for_study`."""
    path = preset_path(name_or_path)
    raw = apply_overrides(load_toml(path), list(overrides))
    return from_dict(Preset, raw, str(path)), raw
