"""Place, grid and border cells on 2-D maps: an arena's position bins (:class:`ArenaMaps`)
or a graph's nodes (:class:`GraphMaps`; fields, gridness and borders on a raster of the true
node geometry, so a hexagonal graph is scored as hexagons).

``place``: η² of position beats circular shifts by whole sequences and the largest field
covers at most ``max_field_fraction`` of the visited bins; ``grid`` and ``grid_90``: 60° and
90° gridness beat the field shuffle; ``border``: the border score beats circular shifts.
Summary: the median 60° gridness. See docs/design.md, "The cell census".
"""

from __future__ import annotations

import torch

from analysis.binning import (
    eta2_of,
    graph_raster,
    node_rate_maps,
    rate_maps,
    shifted,
    smooth_rate_maps,
    spatial_information,
)
from analysis.census.config import CensusConfig
from analysis.census.nulls import Nulls
from analysis.census.scorer import Label, Population, Samples, Score, Scorer, labelled
from analysis.fields import border_scores, place_fields
from analysis.gridness import grid_scores
from tasks import ArenaMaps, GraphMaps

PLACE = Label("place", ("spatial_eta2",))
GRID = Label("grid", ("grid_60",))
GRID_90 = Label("grid_90", ("grid_90",))
BORDER = Label("border", ("border",))


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
            labelled((tuning.p_values < alpha) & compact, PLACE),
        ),
        Score("spatial_info", info),
        Score("n_fields", fields.n_fields.double()),
        Score("place_score", fields.place_score),
        Score("grid_60", grid.score_60, grid_60.p_values, labelled(grid_60.p_values < alpha, GRID)),
        Score(
            "grid_90", grid.score_90, grid_90.p_values, labelled(grid_90.p_values < alpha, GRID_90)
        ),
        Score("grid_scale", grid.scale),
        Score("grid_orientation", grid.orientation),
        Score(
            "border", border.observed, border.p_values, labelled(border.p_values < alpha, BORDER)
        ),
    ]


def arena_scores(spec: ArenaMaps, s: Samples, config: CensusConfig, nulls: Nulls) -> list[Score]:
    pos = s.latents[spec.latent].double()

    def maps_of(a):
        return rate_maps(pos, a, spec.bins, spec.extent)

    return spatial_scores(s, maps_of, maps_of, config, nulls)


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


def median_gridness(population: Population) -> dict[str, float]:
    return {"grid_60_median": float(population.values["grid_60"].median())}


LABELS = (PLACE, GRID, GRID_90, BORDER)
ARENA = Scorer(ArenaMaps, arena_scores, LABELS, median_gridness)
GRAPH = Scorer(GraphMaps, graph_scores, LABELS, median_gridness)
