"""The cell census of one probed run: every unit of every cached hook gets the scores its
task's rate maps call for, each with the shuffle p-value the field uses for that score, and
a label where the score is significant.

Reads the run's activation store (held-out environments, see :mod:`probes.cache`) and the
task's :meth:`~tasks.Task.rate_maps` declarations; writes ``cells.csv`` (one row per hook,
unit and score: :data:`CELL_COLUMNS`) and ``census.csv`` (per-run summaries: the fraction of
units carrying each label, per hook and pooled, and the scores' population statistics).

Scores, nulls and labels (p < ``alpha``, one-sided, ``(1 + #null >= observed) / (1 + n)``):

=============== ===================================== ========================= =========
map kind        score                                 null                      label
=============== ===================================== ========================= =========
arena, graph    spatial_info (Skaggs, bits)           circular time shift       place*
arena, graph    grid_60 (DeepMind "mean" variant)     field shuffle             grid
arena, graph    grid_90                               field shuffle             grid_90
arena, graph    border (Solstad)                      circular time shift       border
track           spatial_info per direction            circular time shift       place
track           field_skew per direction              (value only)
time            time_info (temporal information)      shift within each trial   time**
time            ramp (|r| of activity with time)      shift within each trial   ramp
route           splitter (index on shared positions)  route labels permuted     splitter
                                                      among passes
tuning          info over the latent's values         circular time shift       tuned
=============== ===================================== ========================= =========

\\* and at least one place field; \\*\\* and not a ramp's monotonic profile (peak inside
the delay). Activations are signed; rates are shifted to be non-negative (each map minus its
minimum) before the information and field scores, which need rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.binning import (
    node_rate_maps,
    rate_maps,
    smooth_rate_maps,
    spatial_information,
    variance_explained,
)
from analysis.field_shuffle import field_shuffle_null
from analysis.fields import border_scores, field_skewness, place_fields
from analysis.gridness import grid_scores
from analysis.relational import splitter_index
from analysis.stats import (
    ShuffleNull,
    group_permutation_null,
    segment_shuffle_null,
    sequence_shift_null,
)
from analysis.temporal import ramp_scores, scaling, time_fields
from lab.config import require
from lab.io import read_json, write_csv
from lab.streams import CENSUS, generator
from probes.cache import ActivationStore
from tasks import ArenaMaps, GraphMaps, RouteMaps, TimeMaps, TrackMaps, TuningMaps, build_task


@dataclass
class CensusConfig:
    n_shuffles: int = 200
    """Shuffles per null (p-values are multiples of 1 / (n_shuffles + 1))."""
    alpha: float = 0.05
    """A score is significant when its p-value is below alpha."""
    smooth_sigma: float = 1.0
    """Gaussian smoothing (bins) of 2-D rate maps before fields, gridness and borders."""
    field_threshold: float = 0.5
    """Fields moved by the gridness null's field shuffle: bins at or above this fraction of
    the map's peak (after subtracting its minimum)."""
    untrained: bool = True
    """Census the network at initialisation too (its label fractions are the baseline a
    trained network's must beat: random recurrent networks already respond to a cue with
    time-varying activity)."""
    max_field_fraction: float = 0.5
    """A place cell's largest field covers at most this fraction of the visited bins (a
    unit tuned to a gradient across the arena is not a place cell)."""

    def __post_init__(self):
        require(0 < self.alpha < 1, f"census.alpha must be in (0, 1), got {self.alpha}")
        require(
            1 / (self.n_shuffles + 1) < self.alpha,
            f"census.n_shuffles={self.n_shuffles} cannot reach p < alpha={self.alpha} (the "
            f"smallest p-value is 1 / (n_shuffles + 1)); use at least "
            f"{int(1 / self.alpha)} shuffles",
        )
        require(
            self.smooth_sigma >= 0, f"census.smooth_sigma must be >= 0, got {self.smooth_sigma}"
        )


CELL_COLUMNS = ("network", "hook", "depth", "unit", "map", "score", "value", "p_value", "label")
"""network: "trained" or "untrained" (the same architecture at initialisation)."""


@dataclass
class Score:
    """One score of every unit of a hook: value [units], p_value [units] (None: no null),
    and the label each unit gets from it ('' for none)."""

    name: str
    value: torch.Tensor
    p_value: torch.Tensor | None = None
    label: list[str] | None = None


@dataclass
class Samples:
    """The tokens a map declaration selects: ``acts`` [sequences, pos, units] and ``mask``
    [sequences, pos] as cached, and flattened over the selected tokens ``act`` [n, units],
    each latent [n, ...] and ``seq`` [n] (the sequence each token comes from)."""

    acts: torch.Tensor
    mask: torch.Tensor
    act: torch.Tensor
    latents: dict[str, torch.Tensor]
    seq: torch.Tensor


class Nulls:
    """The shuffle nulls of one run's census, each drawing from its own seeded stream."""

    def __init__(self, config: CensusConfig, seed: int):
        self.config, self.seed, self.count = config, seed, 0

    def _generator(self) -> torch.Generator:
        self.count += 1
        return generator(self.seed, CENSUS, self.count)

    def shift(self, metric, s: Samples) -> ShuffleNull:
        """Circular shifts by whole sequences (see :func:`analysis.stats.sequence_shift_null`)."""
        return sequence_shift_null(
            metric, s.acts, s.mask, n_shuffles=self.config.n_shuffles, generator=self._generator()
        )

    def within(self, metric, act: torch.Tensor, segments: torch.Tensor) -> ShuffleNull:
        """Circular shifts within each segment (trial)."""
        return segment_shuffle_null(
            metric, act, segments, n_shuffles=self.config.n_shuffles, generator=self._generator()
        )

    def fields(self, metric, maps: torch.Tensor) -> ShuffleNull:
        """Rate-map field shuffles (Barry & Burgess 2017); fields are the bins above half of
        each map's range (at the usual 20% the smooth maps of network units, whose troughs
        are narrow, form one connected field that a shuffle cannot move)."""
        return field_shuffle_null(
            metric,
            maps,
            n_shuffles=self.config.n_shuffles,
            threshold=self.config.field_threshold,
            generator=self._generator(),
        )

    def permute(self, metric, labels: torch.Tensor, groups: torch.Tensor) -> ShuffleNull:
        """``metric(labels)`` against labels permuted among groups (passes)."""
        return group_permutation_null(
            metric, labels, groups, n_shuffles=self.config.n_shuffles, generator=self._generator()
        )


def labelled(null: ShuffleNull, alpha: float, label: str, also=None) -> list[str]:
    """``label`` for units with p < alpha (and ``also`` [units] bool, if given)."""
    keep = null.p_values < alpha
    if also is not None:
        keep = keep & also
    return [label if k else "" for k in keep.tolist()]


def shifted(maps: torch.Tensor) -> torch.Tensor:
    """Each map minus its minimum over visited bins (signed activations -> rates >= 0)."""
    low = torch.nan_to_num(maps, nan=torch.inf).flatten(1).amin(1)
    return maps - low.view(-1, *([1] * (maps.ndim - 1)))


def eta2_of(maps_of):
    """``act [n, units] -> η² [units]``: the share of each unit's variance explained by the
    bins of ``maps_of(act) -> (maps, occupancy)`` (sign-agnostic tuning strength)."""

    def eta2(act: torch.Tensor) -> torch.Tensor:
        maps, occupancy = maps_of(act)
        return variance_explained(maps, occupancy, act.var(0, unbiased=False))

    return eta2


def spatial_scores(s: Samples, info_maps, image_maps, config: CensusConfig, nulls: Nulls):
    """Place, grid and border scores of 2-D tuning. ``info_maps(act) -> (maps, occupancy)``
    are the bins tuning is measured over (arena bins or graph nodes); ``image_maps(act) ->
    (maps [units, n, n], occupancy [n, n])`` the square images that fields, gridness and
    borders need."""
    alpha = config.alpha

    def smooth_image(a):
        maps, occupancy = image_maps(a)
        if config.smooth_sigma > 0:
            maps = smooth_rate_maps(maps, occupancy, config.smooth_sigma)
        return shifted(maps)

    tuning = nulls.shift(eta2_of(info_maps), s)
    info = spatial_information(*info_maps(s.act), signed="shift")
    image = smooth_image(s.act)
    fields = place_fields(image)
    visited = (~torch.isnan(image[0])).sum()
    compact = (fields.n_fields > 0) & (fields.sizes[:, 0] <= config.max_field_fraction * visited)
    grid = grid_scores(image, details=True)
    grid_60 = nulls.fields(lambda m: grid_scores(m), image)
    grid_90 = nulls.fields(lambda m: grid_scores(m, details=True).score_90, image)
    border = nulls.shift(lambda a: border_scores(smooth_image(a)), s)
    return [
        Score(
            "spatial_eta2",
            tuning.observed,
            tuning.p_values,
            labelled(tuning, alpha, "place", compact),
        ),
        Score("spatial_info", info),
        Score("n_fields", fields.n_fields.double()),
        Score("place_score", fields.place_score),
        Score("grid_60", grid.score_60, grid_60.p_values, labelled(grid_60, alpha, "grid")),
        Score("grid_90", grid.score_90, grid_90.p_values, labelled(grid_90, alpha, "grid_90")),
        Score("grid_scale", grid.scale),
        Score("grid_orientation", grid.orientation),
        Score("border", border.observed, border.p_values, labelled(border, alpha, "border")),
    ]


def arena_scores(spec: ArenaMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    pos = s.latents[spec.latent].double()

    def maps_of(a):
        return rate_maps(pos, a, spec.bins, spec.extent)

    return spatial_scores(s, maps_of, maps_of, config, nulls)


def graph_raster(node_xy: torch.Tensor, per_unit: float) -> torch.Tensor:
    """[n, n] long: the node drawn at each bin of a square raster of the graph (the node
    nearest the bin's centre, -1 where no node is within 0.75 edge lengths)."""
    low = node_xy.double().min(0).values - 0.5
    span = float((node_xy.max(0).values + 0.5 - low).max())
    n = max(2, round(span * per_unit))
    offsets = (torch.arange(n, dtype=torch.float64) + 0.5) * (span / n)
    grid = torch.stack(torch.meshgrid(low[0] + offsets, low[1] + offsets, indexing="ij"), -1)
    dist = (grid[:, :, None, :] - node_xy.double()).norm(dim=-1)  # [n, n, nodes]
    nearest = dist.min(-1)
    return torch.where(nearest.values <= 0.75, nearest.indices, -1)


def graph_scores(spec: GraphMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    node_xy = torch.tensor(spec.node_xy, dtype=torch.float64)
    node = s.latents[spec.latent].long()
    raster = graph_raster(node_xy, spec.raster_per_unit)
    inside = raster >= 0

    def node_maps(a):
        return node_rate_maps(node, a, len(node_xy))

    def image_maps(a):
        maps, occupancy = node_maps(a)
        image = torch.where(inside, maps[:, raster.clamp(min=0)], torch.nan)
        return image, torch.where(inside, occupancy[raster.clamp(min=0)], torch.nan)

    return spatial_scores(s, node_maps, image_maps, config, nulls)


def track_scores(spec: TrackMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    """Tuning and field skewness on each direction of travel ("east" = +1)."""
    scores, place = [], torch.zeros(s.act.shape[1], dtype=torch.bool)
    for name, sign in (("east", 1), ("west", -1)):
        rows = s.latents[spec.direction] == sign
        pos = s.latents[spec.latent][rows].long()
        by_direction = Samples(s.acts, _submask(s.mask, rows), s.act[rows], {}, s.seq[rows])

        def maps_of(a, pos=pos):
            return node_rate_maps(pos, a, spec.n_positions)

        tuning = nulls.shift(eta2_of(maps_of), by_direction)
        maps, _ = maps_of(s.act[rows])
        place |= tuning.p_values < config.alpha
        scores += [
            Score(f"spatial_eta2_{name}", tuning.observed, tuning.p_values),
            Score(f"field_skew_{name}", field_skewness(maps, signed="shift")),
        ]
    scores.append(Score("place_track", place.double(), None, ["place" if p else "" for p in place]))
    return scores


def _submask(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The tokens of ``mask`` for which the flattened selection ``rows`` holds."""
    out = torch.zeros_like(mask)
    out[mask] = rows
    return out


def time_scores(spec: TimeMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    """Time fields over time since the cue, and ramps, against shifts within trials."""
    t = s.latents[spec.latent].double()
    trial = s.latents[spec.trial].long()
    segments = s.seq * (int(trial.max()) + 2) + trial + 1
    extent = (-0.5, spec.n_bins - 0.5)

    def maps_of(a):
        return node_rate_maps(t.round().long().clamp(0, spec.n_bins - 1), a, spec.n_bins)

    def ramp(a):
        return ramp_scores(t, a).r.abs()

    fields = time_fields(t, s.act, bins=spec.n_bins, extent=extent, signed="shift")
    tuning = nulls.within(eta2_of(maps_of), s.act, segments)
    ramps = nulls.within(ramp, s.act, segments)
    peak_bin = (fields.peak_time - extent[0]).floor().long()
    at_edge = (peak_bin <= 0) | (peak_bin >= spec.n_bins - 1)
    is_ramp = (ramps.p_values < config.alpha) & at_edge
    return [
        Score(
            "time_eta2",
            tuning.observed,
            tuning.p_values,
            labelled(tuning, config.alpha, "time", ~is_ramp),
        ),
        Score("time_info", fields.information),
        Score("time_peak", fields.peak_time),
        Score("time_width", fields.width),
        Score(
            "ramp", ramps.observed, ramps.p_values, ["ramp" if r else "" for r in is_ramp.tolist()]
        ),
    ]


def route_scores(spec: RouteMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    """Splitter index on the shared positions, route labels permuted among passes."""
    pos = s.latents[spec.latent].long()
    route = s.latents[spec.route].long()
    group = s.seq * (int(s.latents[spec.group].max()) + 1) + s.latents[spec.group].long()

    def index(labels):
        return splitter_index(s.act, pos, labels, spec.n_positions)

    null = nulls.permute(index, route, group)
    return [
        Score("splitter", null.observed, null.p_values, labelled(null, config.alpha, "splitter"))
    ]


def tuning_scores(spec: TuningMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    """Tuning to a discrete latent: variance explained by its value, and information."""
    value = s.latents[spec.latent].long()

    def maps_of(a):
        return node_rate_maps(value, a, spec.n_values)

    tuning = nulls.shift(eta2_of(maps_of), s)
    return [
        Score(
            f"{spec.latent}_eta2",
            tuning.observed,
            tuning.p_values,
            labelled(tuning, config.alpha, "tuned"),
        ),
        Score(f"{spec.latent}_info", spatial_information(*maps_of(s.act), signed="shift")),
    ]


LABELS = {
    "arena": ("place", "grid", "grid_90", "border"),
    "graph": ("place", "grid", "grid_90", "border"),
    "track": ("place",),
    "time": ("time", "ramp"),
    "route": ("splitter",),
    "tuning": ("tuned",),
}
"""The labels each map kind can give (their fractions are reported, zeros included)."""

SCORERS = {
    ArenaMaps: ("arena", arena_scores),
    GraphMaps: ("graph", graph_scores),
    TrackMaps: ("track", track_scores),
    TimeMaps: ("time", time_scores),
    RouteMaps: ("route", route_scores),
    TuningMaps: ("tuning", tuning_scores),
}


def select(spec, acts: torch.Tensor, latents: dict[str, torch.Tensor]) -> Samples:
    """The tokens of [sequences, pos, ...] tensors that ``spec.at`` selects."""
    n_seq, n_pos = acts.shape[:2]
    mask = torch.ones(n_seq, n_pos, dtype=torch.bool) if spec.at is None else latents[spec.at]
    mask = mask.bool()
    seq = torch.arange(n_seq)[:, None].expand(n_seq, n_pos)
    acts = acts.double()
    flat = {k: v[mask] for k, v in latents.items()}
    return Samples(acts, mask, acts[mask], flat, seq[mask])


def census_run(run_dir: Path, config: CensusConfig, progress: bool = True) -> dict[str, float]:
    """Score every unit of every cached hook of a probed run, trained and (with
    ``config.untrained``) at initialisation; write ``cells.csv`` and ``census.csv``; return
    the trained network's pooled label fractions."""
    run_dir = Path(run_dir)
    run = read_json(run_dir / "config.json", "run config (train the run first)")
    task = build_task(run["task"], run["task_config"])
    networks = {"trained": "activations"}
    if config.untrained:
        networks["untrained"] = "activations_untrained"
    rows, summary = [], []
    for network, folder in networks.items():
        store = ActivationStore.open(run_dir / folder)
        mine = score_store(store, task.rate_maps(), config, Nulls(config, run["seed"]), progress)
        rows += [{"network": network, **row} for row in mine]
        suffix = "" if network == "trained" else "_untrained"
        summary += [
            {**row, "metric": row["metric"] + suffix} for row in summarise(mine, store.hooks)
        ]
    write_csv(run_dir / "cells.csv", rows)
    write_csv(run_dir / "census.csv", summary)
    return {r["metric"]: round(r["value"], 3) for r in summary if r["hook"] == ""}


def score_store(
    store: ActivationStore, specs, config: CensusConfig, nulls: Nulls, progress: bool
) -> list[dict]:
    """Rows of :data:`CELL_COLUMNS` for every unit of every hook of ``store``."""
    _, latents = store.load(store.hooks[0], store.latents)
    rows = []
    work = [(spec, depth, hook) for spec in specs for depth, hook in enumerate(store.hooks)]
    for spec, depth, hook in tqdm(work, desc=f"census {store.path.name}", disable=not progress):
        acts, _ = store.load(hook, [])
        kind, scorer = SCORERS[type(spec)]
        for score in scorer(spec, select(spec, acts, latents), config, nulls):
            p_values = (
                [None] * len(score.value) if score.p_value is None else score.p_value.tolist()
            )
            labels = score.label or [""] * len(score.value)
            for unit, (value, p, label) in enumerate(
                zip(score.value.tolist(), p_values, labels, strict=True)
            ):
                rows.append(
                    {
                        "hook": hook,
                        "depth": depth,
                        "unit": unit,
                        "map": kind,
                        "score": score.name,
                        "value": value,
                        "p_value": p,
                        "label": label,
                    }
                )
    return rows


def summarise(rows: list[dict], hooks: list[str]) -> list[dict]:
    """Per-run census summaries (metric, hook, value; hook '' pools every hook): the
    fraction of units carrying each label, and population statistics of the scores:
    time-cell scaling (slope, intercept and r of width on peak time, coverage and
    uniformity of the peaks), field skew against the direction of travel, median gridness."""
    cells = pd.DataFrame(rows)
    out = []
    units = cells.groupby("hook")["unit"].nunique()
    labelled_units = cells[cells["label"] != ""].drop_duplicates(["hook", "unit", "label"])
    possible = sorted({label for kind in cells["map"].unique() for label in LABELS[kind]})
    for label in possible:
        mine = labelled_units[labelled_units["label"] == label]
        for hook in hooks:
            out.append(metric(f"frac_{label}", (mine["hook"] == hook).sum() / units[hook], hook))
        out.append(metric(f"frac_{label}", len(mine) / units.sum()))
    wide = cells.pivot_table(index=["hook", "unit"], columns="score", values="value")
    labels = cells[cells["label"] != ""].groupby(["hook", "unit"])["label"].agg(set)
    has = wide.index.map(lambda key: labels.get(key, set()))
    if "time_peak" in wide:
        time_cells = wide[[("time" in s) for s in has]]
        out.append(metric("n_time_cells", len(time_cells)))
        if len(time_cells) >= 3 and time_cells["time_peak"].nunique() > 1:
            fit = scaling(
                torch.tensor(time_cells["time_peak"].to_numpy()),
                torch.tensor(time_cells["time_width"].to_numpy()),
            )
            for name in ("slope", "intercept", "r", "coverage", "uniformity"):
                out.append(metric(f"time_{name}", float(getattr(fit, name))))
    if "field_skew_east" in wide:
        against = (wide["field_skew_west"] - wide["field_skew_east"]) / 2
        place = [("place" in s) for s in has]
        out.append(metric("skew_against_travel", float(against[place].mean())))
        out.append(metric("skew_against_travel_all_units", float(against.mean())))
    if "grid_60" in wide:
        out.append(metric("grid_60_median", float(wide["grid_60"].median())))
    return out


def metric(name: str, value: float, hook: str = "") -> dict:
    return {"metric": name, "hook": hook, "value": float(value)}
