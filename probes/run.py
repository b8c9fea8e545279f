"""The probing stage of one trained run: cache activations on held-out environments, then
fit every probe the task's targets call for at every depth of the residual stream, for the
trained network (with its control task) and for the same architecture at initialisation.

Writes into the run directory ``activations/`` (the trained network's activation store; the
cell census reads it), ``activations_untrained/`` (the same sequences through the network
at initialisation), ``probes.csv`` (one row per hook, target and probe kind: :data:`COLUMNS`)
and ``probe_weights.safetensors`` (every linear probe of the trained network, ``<target>|
<hook>/weight`` [d, k] and ``/bias`` [k], for steering). The command line is
``python -m studies probe``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lab.io import atomic_write, read_json, write_csv
from lab.streams import PROBE, generator, resolve_device
from models.checkpoint import load_checkpoint
from models.registry import to_device
from models.run import build_run
from probes.cache import ActivationStore, cache_activations, iterate_batches, layer_hooks
from probes.config import ProbeConfig
from probes.fit import ProbeFit, fit_probe
from probes.linear import LinearProbe, LogisticConfig
from probes.mlp import MLPConfig
from probes.stream import store_batches
from tasks.targets import ProbeTarget

COLUMNS = (
    "hook",  # residual stream at this depth (blocks.0.hook_resid_pre = depth 0)
    "depth",
    "target",  # latent, with @token-filter
    "target_kind",  # regression / classification / circular
    "probe",  # ridge / logistic / mlp
    "metric",  # r2 / accuracy
    "score",  # on the held-out environments
    "baseline",  # chance: the best constant prediction (0 for r2)
    "untrained",  # the same probe on the network at initialisation
    "control",  # the same probe on the control task (Hewitt & Liang)
    "selectivity",  # score - control
    "selectivity_over_chance",  # (score - baseline) - (control - its baseline)
    "proximity_error",  # spatial targets (Gurnee & Tegmark)
    "train_score",
    "cv_score",  # the penalty's (or epoch's) selection score
    "penalty",
    "n_train",
    "n_test",
)


def load_trained(run_dir: Path) -> tuple[dict, object, torch.nn.Module, torch.device]:
    """(run config, task, trained model on its device in eval mode, device) of a run."""
    run_dir = Path(run_dir)
    run = read_json(run_dir / "config.json", "run config (train the run first)")
    device = resolve_device(run["train"]["device"])
    task, model = build_run(run)
    identity = {k: run[k] for k in ("study", "condition", "model", "task", "seed")}
    load_checkpoint(run_dir / "checkpoint.safetensors", model, expect_meta=identity)
    return run, task, to_device(model, device).eval(), device


def probe_batches(task, run: dict, config: ProbeConfig):
    """The held-out probe sequences of a run (their own random stream, never trained on)."""
    return iterate_batches(
        task, config.n_sequences, config.batch_size, lambda i: generator(run["seed"], PROBE, i)
    )


def kinds_for(target: ProbeTarget, config: ProbeConfig) -> list[str]:
    """The probe kinds of ``config.kinds`` for ``target``: "linear" is ridge for regression
    and circular targets, logistic for classification."""
    linear = "logistic" if target.kind == "classification" else "ridge"
    return [linear if kind == "linear" else kind for kind in config.kinds]


def fit(
    kind: str,
    store: ActivationStore,
    hook: str,
    target: ProbeTarget,
    config: ProbeConfig,
    seed: int,
    control: bool,
) -> ProbeFit:
    settings = {
        "ridge": None,
        "logistic": LogisticConfig(steps=config.logistic_steps),
        "mlp": MLPConfig(max_epochs=config.mlp_epochs),
    }[kind]
    return fit_probe(
        kind,
        store_batches(store, hook, target),
        target,
        control=control,
        folds=config.folds,
        test_fraction=config.test_fraction,
        seed=seed,
        config=settings,
    )


def probe_run(run_dir: Path, config: ProbeConfig, progress: bool = True) -> list[dict]:
    """Cache and probe one run; return the rows written to ``probes.csv``."""
    run_dir = Path(run_dir)
    run, task, model, device = load_trained(run_dir)
    hooks = layer_hooks(run["model_config"]["n_layers"])
    stores = {}
    for name, network in (("", model), ("_untrained", build_run(run)[1])):
        stores[name] = cache_activations(
            to_device(network, device).eval(),
            probe_batches(task, run, config),
            hooks,
            run_dir / f"activations{name}",
            device,
            progress,
        )
    rows, weights = [], {}
    for target in task.probe_targets():
        for kind in kinds_for(target, config):
            for depth, hook in enumerate(hooks):
                trained = fit(kind, stores[""], hook, target, config, run["seed"], config.control)
                untrained = fit(
                    kind, stores["_untrained"], hook, target, config, run["seed"], False
                )
                rows.append(row(hook, depth, target, trained, untrained))
                if isinstance(trained.probe, LinearProbe):
                    for name in ("weight", "bias"):
                        value = getattr(trained.probe, name).float().contiguous()
                        weights[f"{target.name}|{hook}/{name}"] = value
    write_csv(run_dir / "probes.csv", rows)
    atomic_write(run_dir / "probe_weights.safetensors", lambda tmp: save_file(weights, tmp))
    return rows


def row(hook: str, depth: int, target: ProbeTarget, fit: ProbeFit, untrained: ProbeFit) -> dict:
    return {
        "hook": hook,
        "depth": depth,
        "target": target.name,
        "target_kind": target.kind,
        "probe": fit.kind,
        "metric": fit.metric,
        "score": fit.score,
        "baseline": fit.baseline,
        "untrained": untrained.score,
        "control": fit.control_score,
        "selectivity": fit.selectivity,
        "selectivity_over_chance": fit.selectivity_over_chance,
        "proximity_error": fit.proximity_error,
        "train_score": fit.train_score,
        "cv_score": fit.selection_score,
        "penalty": fit.penalty,
        "n_train": fit.n_train,
        "n_test": fit.n_test,
    }
