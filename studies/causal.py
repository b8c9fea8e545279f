"""The causal stage of one probed, censused run: does the network use what the probes read
and the census labels?

* Ablation (every study): each population of units the census labels at a hook (place,
  grid, time, splitter, tuned, ...; at least ``min_units`` and at most half the hook) is
  mean-ablated on held-out batches; the loss change is compared with as many random units
  and as many units matched for activity variance, with bootstrap intervals over batches
  (:func:`probes.causal.ablation.ablate`).
* Steering (studies with a :class:`Steering` declaration): the activation at the probe's
  best hook is moved along the direction the linear probe reads the target from, in steps
  of the activation's standard deviation along it, and a task readout of the output is
  measured against random directions (:func:`probes.causal.steering.steer`).

Writes ``causal.csv`` in the run directory (:data:`COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from lab.config import require
from lab.io import write_csv
from lab.streams import CAUSAL, generator
from probes.cache import ActivationStore, iterate_batches
from probes.causal.ablation import ablate, bootstrap_ci
from probes.causal.steering import steer
from probes.run import load_trained
from tasks import Batch, Task

COLUMNS = (
    "intervention",  # ablation-mean / ablation-zero / steering
    "hook",
    "target",  # the census label ablated, or the probe target steered
    "population",  # ablation: label, random, matched, label-random, label-matched;
    # steering: along, random
    "amount",  # ablation: k units; steering: alpha in standard deviations
    "effect",  # ablation: loss change; steering: change of the readout
    "ci_low",
    "ci_high",
)


@dataclass
class CausalConfig:
    n_batches: int = 8
    """Held-out batches (their own random stream) the interventions are measured on."""
    batch_size: int = 32
    modes: list[str] = field(default_factory=lambda: ["mean"])
    """Ablation modes: "mean" (units set to their mean) and/or "zero"."""
    n_draws: int = 10
    """Random and variance-matched control populations per ablation."""
    min_units: int = 2
    """Smallest labelled population that is ablated."""
    alphas: list[float] = field(default_factory=lambda: [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    """Steering strengths, in standard deviations of the activity along the direction."""
    n_random: int = 8
    """Random directions of the steering control."""

    def __post_init__(self):
        require(self.n_batches >= 2, f"causal.n_batches must be >= 2, got {self.n_batches}")
        require(self.batch_size >= 1, f"causal.batch_size must be >= 1, got {self.batch_size}")
        bad = sorted(set(self.modes) - {"mean", "zero"})
        require(not bad, f"causal.modes must be 'mean' and/or 'zero', got {self.modes}")
        require(self.n_draws >= 1 and self.n_random >= 1, "causal.n_draws/n_random must be >= 1")
        require(self.min_units >= 1, f"causal.min_units must be >= 1, got {self.min_units}")


Readout = Callable[[Task, Batch], tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]
"""(task, batch) -> (positions [batch, pos] bool edited, readout(logits) -> values [n])."""


@dataclass(frozen=True)
class Steering:
    """Steer along a linear probe's direction and read out the output.

    target: probe target name (as in probes.csv); output: which output of the probe (a
    coordinate of a regression target, or a class); readout: see :data:`Readout`; expect:
    what a network that uses the direction does (for the docs and figure)."""

    target: str
    readout: Readout
    output: int = 0
    expect: str = ""


def ablation_rows(model, task, batches, cells: pd.DataFrame, config: CausalConfig) -> list[dict]:
    rows = []
    cells = cells[cells["network"] == "trained"]
    labelled = cells[cells["label"].fillna("") != ""]
    n_units = cells.groupby("hook")["unit"].nunique()
    for (hook, label), group in labelled.groupby(["hook", "label"], sort=False):
        units = sorted(set(group["unit"]))
        if not config.min_units <= len(units) <= n_units[hook] // 2:
            continue
        for mode in config.modes:
            result = ablate(model, batches, hook, units, task.loss, mode, config.n_draws)
            for name, (mean, low, high) in result.summary().items():
                population = name.replace("target", label).replace(" ", "")
                rows.append(
                    {
                        "intervention": f"ablation-{mode}",
                        "hook": hook,
                        "target": label,
                        "population": population,
                        "amount": len(units),
                        "effect": mean,
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
    return rows


def steering_rows(model, task, batches, run_dir: Path, spec: Steering, config) -> list[dict]:
    probes = pd.read_csv(run_dir / "probes.csv")
    linear = probes[
        (probes["target"] == spec.target) & (probes["probe"].isin(["ridge", "logistic"]))
    ]
    if linear.empty:
        return []
    hook = linear.sort_values("score").iloc[-1]["hook"]
    weights = load_file(run_dir / "probe_weights.safetensors")
    weight = weights[f"{spec.target}|{hook}/weight"].double()  # [d, k]
    column = weight[:, spec.output]
    if weight.shape[1] > 1 and linear["probe"].iloc[0] == "logistic":
        column = column - weight.mean(1)  # a class's logit against the mean logit
    direction = column / column.norm()
    acts, _ = ActivationStore.open(run_dir / "activations").load(hook, [])
    sd = float((acts.flatten(0, 1).double() @ direction).std())
    alphas = [a * sd for a in config.alphas]
    rows = []
    for index, batch in enumerate(batches):
        positions, readout = spec.readout(task, batch)
        response = steer(
            model,
            batch.inputs,
            hook,
            direction.float(),
            alphas,
            readout,
            positions,
            config.n_random,
            seed=index,
        )
        for alpha, along, random in zip(
            config.alphas, response.along.tolist(), response.random.mean(0).tolist(), strict=True
        ):
            rows += [
                {"alpha": alpha, "population": "along", "value": along, "batch": index},
                {"alpha": alpha, "population": "random", "value": random, "batch": index},
            ]
    frame = pd.DataFrame(rows)
    out = []
    for (alpha, population), group in frame.groupby(["alpha", "population"]):
        values = torch.tensor(group["value"].to_numpy())
        mean, low, high = bootstrap_ci(values)
        out.append(
            {
                "intervention": "steering",
                "hook": hook,
                "target": spec.target,
                "population": population,
                "amount": alpha,
                "effect": mean,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return out


def causal_run(run_dir: Path, config: CausalConfig, steering: Steering | None) -> list[dict]:
    """Ablate the run's labelled populations and steer along its probe direction (when the
    study declares one); write ``causal.csv``."""
    run_dir = Path(run_dir)
    run, task, model, device = load_trained(run_dir)
    batches = [
        b.to(device)
        for b in iterate_batches(
            task,
            config.n_batches * config.batch_size,
            config.batch_size,
            lambda i: generator(run["seed"], CAUSAL, i),
        )
    ]
    cells = pd.read_csv(run_dir / "cells.csv") if (run_dir / "cells.csv").stat().st_size else None
    rows = [] if cells is None else ablation_rows(model, task, batches, cells, config)
    if steering is not None:
        rows += steering_rows(model, task, batches, run_dir, steering, config)
    write_csv(run_dir / "causal.csv", rows)
    return rows


# ------------------------------------------------------------------ steering readouts


def respond_logit(task: Task, batch: Batch):
    """Interval timing: edit the delay steps; read the respond-vs-wait logit there (more
    elapsed time should bring the response forward: a positive slope)."""
    positions = batch.latents["phase"] == 1  # cue and delay, before the response

    def readout(logits):
        return (logits[..., 1] - logits[..., 0])[positions]

    return positions, readout


def next_token_logprob(task: Task, batch: Batch, token: int = 0):
    """Mess3: read the log-probability of token ``token`` next, everywhere."""

    def readout(logits):
        return torch.log_softmax(logits.double(), -1)[..., token]

    return None, readout


def decoded_x(task: Task, batch: Batch):
    """Path integration: read the x coordinate the output codes for (the place cells'
    centres weighted by the predicted distribution; the Cartesian readout itself)."""
    centres = task.centres.to(batch.inputs.device).double()

    def readout(logits):
        if task.config.readout == "cartesian":
            return logits[..., 0]
        return torch.softmax(logits.double(), -1) @ centres[:, 0]

    return None, readout


def right_turn_logit(task: Task, batch: Batch):
    """Alternation: edit the stem; read, at the choice point, the logit of the right arm's
    first node against the left arm's (steering towards "next turn: right" should raise
    it)."""
    top = (task.config.stem_length - 1) * 3
    at_choice = batch.inputs == task.choice_node

    def readout(logits):
        return (logits[..., top + 2] - logits[..., top])[at_choice]

    return batch.latents["on_stem"], readout
