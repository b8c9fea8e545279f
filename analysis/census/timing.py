"""Time cells and ramps (:class:`TimeMaps`): tuning to time since a cue within trials,
against circular shifts within each trial. ``time``: η² of time beats the null and the unit
is not a ramp; ``ramp``: \\|r\\| of activity with time beats the null and the tuning
curve peaks at an edge of the delay. Summary: the time cells' scaling of field width with
peak time (Cao et al. 2022), coverage and uniformity of their peaks.
"""

from __future__ import annotations

import torch

from analysis.binning import eta2_of, node_rate_maps
from analysis.census.config import CensusConfig
from analysis.census.nulls import Nulls
from analysis.census.scorer import Label, Population, Samples, Score, Scorer, labelled
from analysis.temporal import ramp_scores, scaling, time_fields
from tasks import TimeMaps

TIME = Label("time", ("time_eta2",))
RAMP = Label("ramp", ("ramp",))


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
            labelled((tuning.p_values < config.alpha) & ~is_ramp, TIME),
        ),
        Score("time_info", fields.information),
        Score("time_peak", fields.peak_time),
        Score("time_width", fields.width),
        Score("ramp", ramps.observed, ramps.p_values, labelled(is_ramp, RAMP)),
    ]


def time_cell_scaling(population: Population) -> dict[str, float]:
    """The number of time cells and, given three with distinct peaks, the fit of their
    field widths on peak times (:func:`analysis.temporal.scaling`)."""
    time_cells = population.values[population.has(TIME)]
    out = {"n_time_cells": len(time_cells)}
    if len(time_cells) >= 3 and time_cells["time_peak"].nunique() > 1:
        fit = scaling(
            torch.tensor(time_cells["time_peak"].to_numpy()),
            torch.tensor(time_cells["time_width"].to_numpy()),
        )
        for name in ("slope", "intercept", "r", "coverage", "uniformity"):
            out[f"time_{name}"] = float(getattr(fit, name))
    return out


TIME_CELLS = Scorer(TimeMaps, time_scores, (TIME, RAMP), time_cell_scaling)
