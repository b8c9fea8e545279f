"""Place cells on a linear track (:class:`TrackMaps`), on each direction of travel
("east" = +1, "west" = -1): ``place`` where η² of position beats circular shifts by whole
sequences on either direction. Summary: field skew against the direction of travel
(Mehta et al. 2000; Stachenfeld et al. 2017).
"""

from __future__ import annotations

import torch

from analysis.binning import eta2_of, node_rate_maps
from analysis.census.config import CensusConfig
from analysis.census.nulls import Nulls
from analysis.census.scorer import Label, Population, Samples, Score, Scorer, labelled
from analysis.fields import field_skewness
from tasks import TrackMaps

PLACE = Label("place", ("spatial_eta2_east", "spatial_eta2_west"))


def track_scores(spec: TrackMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    """Tuning and field skewness on each direction of travel."""
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
    scores.append(Score("place_track", place.double(), None, labelled(place, PLACE)))
    return scores


def _submask(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The tokens of ``mask`` for which the flattened selection ``rows`` holds."""
    out = torch.zeros_like(mask)
    out[mask] = rows
    return out


def skew_against_travel(population: Population) -> dict[str, float]:
    """(skew west - skew east) / 2 averaged over place cells and over every unit: positive
    when fields skew against the direction of travel."""
    values = population.values
    against = (values["field_skew_west"] - values["field_skew_east"]) / 2
    return {
        "skew_against_travel": float(against[population.has(PLACE)].mean()),
        "skew_against_travel_all_units": float(against.mean()),
    }


TRACK = Scorer(TrackMaps, track_scores, (PLACE,), skew_against_travel)
