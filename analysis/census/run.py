"""The census stage of one probed run: every registered scorer
(:data:`~analysis.census.registry.SCORERS`) scores every unit of every cached hook on the
task's rate maps of its type (:meth:`~tasks.Task.rate_maps`), for the trained network and
the same architecture at initialisation.

Reads the run's activation stores (held-out environments, see :mod:`probes.cache`); writes
``cells.csv`` (one row per network, hook, unit and score: :data:`CELL_COLUMNS`) and
``census.csv`` (per network: the fraction of units carrying each label the scorers can
give, per hook and pooled, and each scorer's population summaries), holding the run's lock
and recording both as made from the activations and the census settings
(:mod:`lab.provenance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.census.config import CensusConfig
from analysis.census.nulls import Nulls
from analysis.census.registry import SCORERS
from analysis.census.scorer import Population, Samples, Score, Scorer
from lab import provenance
from lab.io import read_json, write_csv
from lab.lock import run_lock
from probes.cache import ActivationStore
from tasks import MapSpec, build_task

CELL_COLUMNS = ("network", "hook", "depth", "unit", "map", "score", "value", "p_value", "label")
"""network: "trained" or "untrained" (the same architecture at initialisation)."""
OUTPUTS = ("cells.csv", "census.csv")


@dataclass
class Scored:
    """What scorer ``name`` gave every unit of one hook on the maps ``spec``."""

    name: str
    scorer: Scorer
    spec: MapSpec
    depth: int
    hook: str
    scores: list[Score]


def census_run(run_dir: Path, config: CensusConfig, progress: bool = True) -> dict[str, float]:
    """Score every unit of every cached hook of a probed run, trained and (with
    ``config.untrained``) at initialisation; write ``cells.csv`` and ``census.csv``; return
    the trained network's pooled label fractions. Holds the run's lock; activations that
    are incomplete or of another run config are refused, and both files are recorded as
    made from the activations and ``config`` (:mod:`lab.provenance`)."""
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        run = read_json(run_dir / "config.json", "run config (train the run first)")
        networks = {"trained": "activations"}
        if config.untrained:
            networks["untrained"] = "activations_untrained"
        for folder in networks.values():
            cached = provenance.require(
                run_dir,
                folder,
                "run the probe stage again",
                stage="probe",
                fingerprint=provenance.fingerprint(run),
            )
        rows, summary = census_tables(run_dir, run, networks, config, progress)
        made_from = provenance.origin(
            "census",
            cached["fingerprint"],
            cached["step"],
            probe=cached["probe"],
            census=vars(config),
        )
        with provenance.rewriting(run_dir, OUTPUTS, made_from):
            write_csv(run_dir / "cells.csv", rows)
            write_csv(run_dir / "census.csv", summary)
    return {r["metric"]: round(r["value"], 3) for r in summary if r["hook"] == ""}


def census_tables(
    run_dir: Path, run: dict, networks: dict[str, str], config: CensusConfig, progress: bool
) -> tuple[list[dict], list[dict]]:
    """The rows of ``cells.csv`` and ``census.csv`` of the activation stores
    ``networks`` (network -> folder of ``run_dir``). Every network is scored by the same
    scorers on the same maps and hooks in the same order, so the i-th :class:`Scored` of
    each network holds the same scores of the same hook."""
    specs = build_task(run["task"], run["task_config"]).rate_maps()
    scored, hooks = {}, {}
    for network, folder in networks.items():
        store = ActivationStore.open(run_dir / folder)
        nulls = Nulls(config, run["seed"])
        scored[network] = score_store(store, specs, config, nulls, progress)
        hooks[network] = store.hooks
    rows, summary = [], []
    for network, mine in scored.items():
        rows += [{"network": network, **row} for row in cell_rows(mine)]
        suffix = "" if network == "trained" else "_untrained"
        summary += [
            {**row, "metric": row["metric"] + suffix} for row in summarise(mine, hooks[network])
        ]
    return rows, summary


def score_store(
    store: ActivationStore, specs, config: CensusConfig, nulls: Nulls, progress: bool
) -> list[Scored]:
    """Every registered scorer's scores of every unit of every hook of ``store``, on each
    of ``specs`` of its type: scorers in registry order, then maps, then hooks."""
    for spec in specs:
        if not any(isinstance(spec, scorer.spec) for scorer in SCORERS.values()):
            served = ", ".join(f"{s.spec.__name__} ({name})" for name, s in SCORERS.items())
            raise ValueError(f"no census scorer serves {spec!r}; scorers serve: {served}")
    _, latents = store.load(store.hooks[0], store.latents)
    work = [
        (name, scorer, spec, depth, hook)
        for name, scorer in SCORERS.items()
        for spec in specs
        if isinstance(spec, scorer.spec)
        for depth, hook in enumerate(store.hooks)
    ]
    scored = []
    for name, scorer, spec, depth, hook in tqdm(
        work, desc=f"census {store.path.name}", disable=not progress
    ):
        acts, _ = store.load(hook, [])
        scores = scorer.score(spec, select(spec, acts, latents), config, nulls)
        check_labels(name, scorer, spec, scores)
        scored.append(Scored(name, scorer, spec, depth, hook, scores))
    return scored


def select(spec, acts: torch.Tensor, latents: dict[str, torch.Tensor]) -> Samples:
    """The tokens of [sequences, pos, ...] tensors that ``spec.at`` selects."""
    n_seq, n_pos = acts.shape[:2]
    mask = torch.ones(n_seq, n_pos, dtype=torch.bool) if spec.at is None else latents[spec.at]
    mask = mask.bool()
    seq = torch.arange(n_seq)[:, None].expand(n_seq, n_pos)
    acts = acts.double()
    flat = {k: v[mask] for k, v in latents.items()}
    return Samples(acts, mask, acts[mask], flat, seq[mask])


def check_labels(name: str, scorer: Scorer, spec, scores: list[Score]) -> None:
    """A scorer gives only the labels it declares, and gives the scores they rest on, each
    with its p-value."""
    declared = {label.name for label in scorer.labels}
    given = {label for score in scores for label in score.label or () if label}
    if given - declared:
        raise ValueError(
            f"census scorer {name!r} gave label(s) {sorted(given - declared)} it does not "
            f"declare; its labels: {sorted(declared)}"
        )
    tested = {score.name for score in scores if score.p_value is not None}
    for label in scorer.labels:
        missing = set(label.score_names(spec)) - tested
        if missing:
            raise ValueError(
                f"census scorer {name!r}: label {label.name!r} rests on score(s) "
                f"{sorted(missing)} it did not give with a p-value; its scores with one: "
                f"{sorted(tested)}"
            )


def cell_rows(scored: list[Scored]) -> list[dict]:
    """Rows of :data:`CELL_COLUMNS` (but ``network``) for every unit of every score."""
    rows = []
    for item in scored:
        for score in item.scores:
            n = len(score.value)
            p_values = [None] * n if score.p_value is None else score.p_value.tolist()
            labels = score.label or [""] * n
            for unit, (value, p, label) in enumerate(
                zip(score.value.tolist(), p_values, labels, strict=True)
            ):
                rows.append(
                    {
                        "hook": item.hook,
                        "depth": item.depth,
                        "unit": unit,
                        "map": item.scorer.kind,
                        "score": score.name,
                        "value": value,
                        "p_value": p,
                        "label": label,
                    }
                )
    return rows


def summarise(scored: list[Scored], hooks: list[str]) -> list[dict]:
    """Per-run census summaries (metric, hook, value; hook '' pools every hook): the
    fraction of units carrying each label the scorers can give, then each scorer's
    population summaries (:attr:`Scorer.summarise`)."""
    cells = pd.DataFrame(cell_rows(scored))
    out = []
    units = cells.groupby("hook")["unit"].nunique()
    labelled_units = cells[cells["label"] != ""].drop_duplicates(["hook", "unit", "label"])
    possible = sorted({label.name for item in scored for label in item.scorer.labels})
    for label in possible:
        mine = labelled_units[labelled_units["label"] == label]
        for hook in hooks:
            out.append(metric(f"frac_{label}", (mine["hook"] == hook).sum() / units[hook], hook))
        out.append(metric(f"frac_{label}", len(mine) / units.sum()))
    by_scorer: dict[str, list[Scored]] = {}
    for item in scored:
        by_scorer.setdefault(item.name, []).append(item)
    for mine in by_scorer.values():
        if mine[0].scorer.summarise is not None:
            summary = mine[0].scorer.summarise(population(mine))
            out += [metric(key, value) for key, value in summary.items()]
    return out


def population(scored: list[Scored]) -> Population:
    """One scorer's scores of every unit of every hook, as a :class:`Population`."""
    cells = pd.DataFrame(cell_rows(scored))
    values = cells.pivot(index=["hook", "unit"], columns="score", values="value")
    given = cells[cells["label"] != ""].groupby(["hook", "unit"])["label"].agg(set)
    labels = pd.Series([given.get(key, set()) for key in values.index], index=values.index)
    return Population(values, labels)


def metric(name: str, value: float, hook: str = "") -> dict:
    return {"metric": name, "hook": hook, "value": float(value)}
