"""Experiment presets (``configs/<name>.toml``) and the resolved config of one run."""

from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    lr: float = 1e-3
    """Peak learning rate (linear warm-up, then cosine decay to 10%)."""
    weight_decay: float = 0.01
    """AdamW decay, applied to parameters with two or more dimensions (not biases or norms)."""
    warmup_steps: int = 100
    grad_clip: float = 1.0
    """Max global gradient norm."""
    log_every: int = 20
    eval_every: int = 200
    eval_batches: int = 4
    """Batches of held-out environments per evaluation (the same ones every time)."""
    checkpoint_every: int = 200
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""


@dataclass
class ProbeConfig:
    n_sequences: int = 256
    """Held-out sequences (environments) whose activations are cached and probed."""
    batch_size: int = 64
    latent: str = "pos_xy"
    """Latent decoded by the ridge probe."""
    token_filter: str = "is_obs"
    """Boolean latent selecting the positions that are probed ("" for all)."""
    test_fraction: float = 0.25
    """Fraction of the cached environments held out to report R² on."""
    folds: int = 5
    """Cross-validation folds (grouped by environment) for choosing the ridge penalty."""


TUNABLE = frozenset({"lr", "weight_decay", "warmup_steps", "grad_clip"})


@dataclass
class Preset:
    """Everything an experiment needs: which task, which models, what budget."""

    experiment: str = "default"
    task: str = "graph_nav"
    models: list[str] = field(default_factory=lambda: ["transformer", "lstm"])
    seeds: list[int] = field(default_factory=lambda: [0])
    param_budget: int | None = None
    """Every model is resized (d_model) to this many parameters, within 10%."""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-task config fields, ``[tasks.<name>]``."""
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-model config fields, ``[model.<name>]``."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training budget every model gets."""
    tune: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-model optimiser settings, ``[tune.<model>]``: only the keys in TUNABLE; the
    budget (steps, batch size) and the data stay the same for every model."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    out_root: str = "runs"

    def __post_init__(self):
        for model, fields in self.tune.items():
            bad = sorted(set(fields) - TUNABLE)
            if bad:
                raise ValueError(
                    f"[tune.{model}] may set only {sorted(TUNABLE)}, not {bad}: steps, batch "
                    "size and data are shared so that every model gets the same budget"
                )

    def train_for(self, model: str) -> TrainConfig:
        """The training config of ``model``: ``[train]`` with its ``[tune.<model>]``."""
        return dataclasses.replace(self.train, **self.tune.get(model, {}))

    def run_dir(self, model: str, seed: int) -> Path:
        return Path(self.out_root) / self.experiment / self.task / model / f"seed{seed}"

    def experiment_dir(self) -> Path:
        return Path(self.out_root) / self.experiment


def from_dict(cls: type, data: dict[str, Any], where: str):
    """Build dataclass ``cls`` from ``data`` (nested dataclasses too); name unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {where}; valid: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        factory = fields[name].default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            value = from_dict(factory, value, f"{where} [{name}]")
        values[name] = value
    return cls(**values)


def load_preset(name_or_path: str, overrides: list[str] = ()) -> Preset:
    """Load ``configs/<name>.toml`` (or a path) and apply ``key.sub=value`` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ValueError(f"no preset {name_or_path!r} ({path}); known presets: {known}")
    with open(path, "rb") as f:
        data = tomllib.load(f)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"override {override!r} is not of the form key=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _parse_value(raw.strip())
    return from_dict(Preset, data, str(path))


def _parse_value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare string such as transformer


def to_json(obj: Any) -> str:
    return json.dumps(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj, indent=2)
