"""The probing stage of one trained run: cache activations on held-out environments, then
decode every probe target the task declares from every depth of the residual stream, for the
trained network and for the same architecture at initialisation (the baseline any code must
beat).

Writes into the run directory ``activations/`` (the activation store, see
:mod:`probes.cache`; the cell census reads it too) and ``probes.csv`` (one row per hook and
target, columns in :data:`COLUMNS`), holding the run's lock and recording both as made
from the run's final checkpoint and the probe settings (:mod:`lab.provenance`). The
command line is ``python -m studies probe``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lab import provenance
from lab.config import ConfigError
from lab.io import read_json, write_csv
from lab.lock import run_lock
from lab.streams import PROBE, generator, resolve_device
from models.checkpoint import CheckpointError, load_checkpoint
from models.registry import to_device
from models.run import build_run
from probes.cache import cache_activations, iterate_batches, layer_hooks, model_activations
from probes.config import ProbeConfig
from probes.decode import decode_targets
from probes.ridge import fold_of

COLUMNS = (
    "hook",  # residual stream at this depth (blocks.0.hook_resid_pre = depth 0)
    "depth",
    "target",  # latent, with @token-filter
    "target_kind",  # regression / classification / circular
    "probe",  # ridge / logistic / mlp
    "metric",  # r2 / accuracy
    "score",  # held-out environments
    "cv_score",  # cross-validated on the training environments, chosen penalty
    "untrained",  # the same probe on the network at initialisation
    "penalty",
    "n_train",
    "n_test",
)
OUTPUTS = ("activations", "probes.csv")


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
            rows = probe_rows(run_dir, config, run, task, model, device, progress)
            write_csv(run_dir / "probes.csv", rows)
    return rows


def require_split(task, run: dict, config: ProbeConfig) -> None:
    """ConfigError unless the held-out split and every cross-validation fold get at least
    one environment (grouped as :func:`probes.decode.decode_targets` groups them: by
    ``env_id``, else each sequence its own); an empty one makes every score NaN."""
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
    """Cache the activations of ``model`` into ``run_dir/activations`` and decode every
    target from every depth, trained and untrained: the rows of ``probes.csv``."""
    hooks = layer_hooks(run["model_config"]["n_layers"])
    store = cache_activations(
        model, probe_batches(task, run, config), hooks, run_dir / "activations", device, progress
    )
    targets = [t for t in task.probe_targets() if t.kind != "classification"]
    trained = decode_targets(
        ((store.shard_acts(shard, hooks), store.shard_latents(shard)) for shard in store.shards()),
        hooks,
        targets,
        config,
    )
    untrained_model = to_device(build_run(run)[1], device).eval()
    untrained = decode_targets(
        (
            (model_activations(untrained_model, b.to(device), hooks), b.latents)
            for b in probe_batches(task, run, config)
        ),
        hooks,
        targets,
        config,
    )
    rows = []
    for target in targets:
        for depth, hook in enumerate(hooks):
            result = trained[target.name, hook]
            rows.append(
                {
                    "hook": hook,
                    "depth": depth,
                    "target": target.name,
                    "target_kind": target.kind,
                    "probe": "ridge",
                    "metric": "r2",
                    "score": result.r2_test,
                    "cv_score": result.r2_cv,
                    "untrained": untrained[target.name, hook].r2_test,
                    "penalty": result.alpha,
                    "n_train": result.n_train,
                    "n_test": result.n_test,
                }
            )
    return rows
