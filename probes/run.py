"""The probing stage of one trained run: cache activations on held-out environments, then
fit every probe the task's targets call for at every depth of the residual stream, for the
trained network (with its control task) and for the same architecture at initialisation.

Writes into the run directory ``activations/`` (the trained network's activation store; the
cell census reads it), ``activations_untrained/`` (the same sequences through the network
at initialisation), ``probes.csv`` (one row per hook, target and probe kind: :data:`COLUMNS`)
and ``probe_weights.safetensors`` (every linear probe of the trained network, ``<target>|
<hook>/weight`` [d, k] and ``/bias`` [k], for steering), holding the run's lock and
recording all four as made from the run's final checkpoint and the probe settings
(:mod:`lab.provenance`). The command line is ``python -m studies probe``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lab import provenance
from lab.config import ConfigError
from lab.io import read_json, write_csv, write_tensors
from lab.lock import run_lock
from lab.streams import PROBE, generator, resolve_device
from models.checkpoint import CheckpointError, load_checkpoint
from models.registry import to_device
from models.run import build_run
from probes.cache import ActivationStore, cache_activations, iterate_batches, layer_hooks
from probes.config import ProbeConfig
from probes.fit import ProbeFit, fit_probe
from probes.linear import LinearProbe, LogisticConfig
from probes.mlp import MLPConfig
from probes.ridge import fold_of
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
OUTPUTS = ("activations", "activations_untrained", "probes.csv", "probe_weights.safetensors")


def load_trained(run_dir: Path) -> tuple[dict, object, torch.nn.Module, torch.device]:
    """(run config, task, trained model on its device in eval mode, device) of a finished
    run; its checkpoint must be intact, of this run config and at the final step."""
    run_dir = Path(run_dir)
    run = read_json(run_dir / "config.json", "run config (train the run first)")
    device = resolve_device(run["train"]["device"])
    task, model = build_run(run)
    path = run_dir / "checkpoint.safetensors"
    step = load_checkpoint(path, model, expect_run=run).step
    if step != run["train"]["steps"]:
        raise CheckpointError(
            f"{path}: the run is not finished (step {step} of {run['train']['steps']}); "
            "train it first"
        )
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
    """Cache and probe one finished run, holding its lock; return the rows written to
    ``probes.csv``. A config whose split leaves a fold empty is refused first."""
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        run, task, model, device = load_trained(run_dir)
        require_split(task, run, config)
        made_from = provenance.origin(
            "probe", provenance.fingerprint(run), run["train"]["steps"], probe=vars(config)
        )
        with provenance.rewriting(run_dir, OUTPUTS, made_from):
            return probe_rows(run_dir, config, run, task, model, device, progress)


def require_split(task, run: dict, config: ProbeConfig) -> None:
    """ConfigError unless the held-out split and every cross-validation fold get at least
    one environment (grouped as :mod:`probes.stream` groups them: by ``env_id``, else each
    sequence its own); an empty one makes every score NaN."""
    ids, seen = [], 0
    for batch in probe_batches(task, run, config):
        n, env = batch.inputs.shape[0], batch.latents.get("env_id")
        ids.append(seen + torch.arange(n) if env is None else env.flatten())
        seen += n
    folds = fold_of(torch.cat(ids).unique(), config.folds, config.test_fraction)
    counts = torch.bincount(folds + 1, minlength=config.folds + 1).tolist()
    if 0 in counts:
        raise ConfigError(
            f"probe.n_sequences={config.n_sequences} is too few for probe.folds="
            f"{config.folds} and probe.test_fraction={config.test_fraction}: environments "
            f"held out, then per fold: {counts}; raise probe.n_sequences"
        )


def probe_rows(run_dir: Path, config: ProbeConfig, run, task, model, device, progress):
    """Cache the activations of ``model`` and of the network at initialisation, fit every
    probe, write ``probes.csv`` and ``probe_weights.safetensors``; return the rows."""
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
    write_tensors(run_dir / "probe_weights.safetensors", weights)
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
