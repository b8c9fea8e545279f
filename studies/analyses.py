"""Study-specific analyses (see :data:`studies.study.Analysis`): what a study measures
beyond the shared probe and census stages."""

from __future__ import annotations

import math

import pandas as pd
import torch
from safetensors.torch import load_file

from analysis.relational import rsa, successor_representation
from lab.streams import EVAL, generator
from models.train import curve_rows
from probes.cache import ActivationStore, iterate_batches
from probes.config import ProbeConfig
from probes.ridge import fold_of
from studies.study import RunContext
from tasks import build_task
from tasks.graph_nav import memory_agent_accuracy, move_curves

GAMMAS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
"""SR discounts (gamma = 0 is the identity, whose RDM is constant: no rank correlation)."""
N_POINTS = 400


def memory_agents(ctx: RunContext) -> dict[str, list[dict]]:
    """The node and edge memory agents (Whittington et al. 2020's controls) on the run's
    own evaluation batches, as curves beside the network's."""
    run = ctx.run
    task = build_task(run["task"], run["task_config"])
    train = run["train"]
    batches = iterate_batches(
        task,
        train["eval_batches"] * train["batch_size"],
        train["batch_size"],
        lambda i: generator(run["seed"], EVAL, i),
    )
    pooled: dict[str, dict] = {}
    for batch in batches:
        for agent in ("node", "edge"):
            accuracy = memory_agent_accuracy(batch, task.config.n_symbols, agent)
            for name, curve in move_curves(accuracy, batch.latents).items():
                key = (f"{agent} agent", name)
                pooled[key] = pooled[key] + curve if key in pooled else curve
    rows = []
    for (source, name), curve in pooled.items():
        rows += [{"source": source, "hook": "", **row} for row in curve_rows({name: curve})]
    return {"curves": rows}


def successor_rsa(ctx: RunContext) -> dict[str, list[dict]]:
    """RSA between each layer's population vectors per (position, heading) state and the
    analytic successor representation of the walk, over the discount gamma (Stachenfeld et
    al. 2017): curves ``rsa_sr`` per hook and ``rsa_sr_last_layer``; metrics
    ``rsa_sr_max`` and ``rsa_sr_best_gamma`` of the last layer."""
    run = ctx.run
    task = build_task(run["task"], run["task_config"])
    store = ActivationStore.open(ctx.run_dir / "activations")
    _, latents = store.load(store.hooks[0], ["pos", "travel", "is_obs"])
    keep = latents["is_obs"].bool()
    state = (2 * latents["pos"] + latents["travel"])[keep]
    n_states = 2 * task.config.n_positions
    counts = torch.bincount(state, minlength=n_states)
    seen = counts > 0
    transitions = task.transition_matrix()
    curves, metrics = [], []
    for depth, hook in enumerate(store.hooks):
        acts, _ = store.load(hook, [])
        means = torch.zeros(n_states, acts.shape[-1], dtype=torch.float64)
        means.index_add_(0, state, acts[keep].double())
        means = means[seen] / counts[seen, None]
        values = []
        for gamma in GAMMAS:
            sr = successor_representation(transitions, gamma)[seen][:, seen]
            values.append(float(rsa(means, sr)))
        for name in (
            ("rsa_sr", "rsa_sr_last_layer") if depth == len(store.hooks) - 1 else ("rsa_sr",)
        ):
            curves += [
                {"source": "network", "curve": name, "hook": hook, "x": g, "value": v, "count": 1}
                for g, v in zip(GAMMAS, values, strict=True)
            ]
    best = max(range(len(GAMMAS)), key=lambda i: -math.inf if math.isnan(values[i]) else values[i])
    metrics += [
        {"metric": "rsa_sr_max", "hook": "", "value": values[best]},
        {"metric": "rsa_sr_best_gamma", "hook": "", "value": GAMMAS[best]},
    ]
    return {"curves": curves, "metrics": metrics}


def belief_simplex(ctx: RunContext) -> dict[str, list[dict]]:
    """Held-out samples projected through the ridge probe of the belief at the depth that
    decodes it best: predicted and true beliefs of up to N_POINTS test samples (Shai et al.
    2024's simplex), for the figure."""
    probes = pd.read_csv(ctx.run_dir / "probes.csv")
    ridge = probes[(probes["target"] == "belief") & (probes["probe"] == "ridge")]
    hook = ridge.sort_values("score").iloc[-1]["hook"]
    weights = load_file(ctx.run_dir / "probe_weights.safetensors")
    w, b = weights[f"belief|{hook}/weight"].double(), weights[f"belief|{hook}/bias"].double()
    config: ProbeConfig = ctx.preset.probe
    store = ActivationStore.open(ctx.run_dir / "activations")
    acts, latents = store.load(hook, ["belief"])
    groups = _sequence_ids(acts.shape[:2])
    test = fold_of(groups, config.folds, config.test_fraction) == -1
    pred = (acts[test].double() @ w + b)[:N_POINTS]
    true = latents["belief"][test].double()[:N_POINTS]
    return {
        "points": [
            {
                "hook": hook,
                "sample": i,
                **{f"pred_{k}": float(pred[i, k]) for k in range(3)},
                **{f"true_{k}": float(true[i, k]) for k in range(3)},
            }
            for i in range(len(pred))
        ]
    }


def _sequence_ids(shape) -> torch.Tensor:
    """[sequences, pos] sequence index of each token (mess3 has no environment ids)."""
    return torch.arange(shape[0])[:, None].expand(shape)
