"""Tuning to a discrete latent (:class:`TuningMaps`): ``tuned`` where η² of the latent's
value beats circular shifts by whole sequences; Skaggs information as a value.
"""

from __future__ import annotations

from analysis.binning import eta2_of, node_rate_maps, spatial_information
from analysis.census.config import CensusConfig
from analysis.census.nulls import Nulls
from analysis.census.scorer import Label, Samples, Score, Scorer, labelled
from tasks import TuningMaps

TUNED = Label("tuned", ("{latent}_eta2",))


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
            labelled(tuning.p_values < config.alpha, TUNED),
        ),
        Score(f"{spec.latent}_info", spatial_information(*maps_of(s.act), signed="shift")),
    ]


TUNING = Scorer(TuningMaps, tuning_scores, (TUNED,))
