"""Splitter cells (:class:`RouteMaps`): ``splitter`` where the splitter index on the shared
positions (Wood et al. 2000; Frank et al. 2000) beats route labels permuted among passes.
"""

from __future__ import annotations

from analysis.census.config import CensusConfig
from analysis.census.nulls import Nulls
from analysis.census.scorer import Label, Samples, Score, Scorer, labelled
from analysis.relational import splitter_index
from tasks import RouteMaps

SPLITTER = Label("splitter", ("splitter",))


def route_scores(spec: RouteMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    """Splitter index on the shared positions, route labels permuted among passes."""
    pos = s.latents[spec.latent].long()
    route = s.latents[spec.route].long()
    group = s.seq * (int(s.latents[spec.group].max()) + 1) + s.latents[spec.group].long()

    def index(labels):
        return splitter_index(s.act, pos, labels, spec.n_positions)

    null = nulls.permute(index, route, group)
    return [
        Score(
            "splitter",
            null.observed,
            null.p_values,
            labelled(null.p_values < config.alpha, SPLITTER),
        )
    ]


ROUTE = Scorer(RouteMaps, route_scores, (SPLITTER,))
