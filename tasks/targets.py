"""What a task declares about its latents, so that probing and the cell census need no
knowledge of any particular task.

A :class:`ProbeTarget` says which latent a probe decodes, at which tokens, and whether it is
a regression, a classification or a circular variable (decoded as its sine and cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

TARGET_KINDS = ("regression", "classification", "circular")


@dataclass(frozen=True)
class ProbeTarget:
    """One latent a probe decodes.

    latent:    name of the latent in :attr:`tasks.Batch.latents` ([batch, pos, ...]).
    kind:      "regression" (float or int values, any trailing shape), "classification"
               (int class ids ``0..n_classes-1``) or "circular" (an angle of the given
               ``period``, decoded as (cos, sin) of ``2 pi value / period``).
    at:        boolean latent selecting the tokens probed (None: every token).
    n_classes: number of classes (classification only).
    spatial:   a position (report proximity error beside the fit).
    period:    period of a circular variable (default 2 pi: radians).
    """

    latent: str
    kind: str = "regression"
    at: str | None = None
    n_classes: int | None = None
    spatial: bool = False
    period: float = 6.283185307179586

    def __post_init__(self):
        if self.kind not in TARGET_KINDS:
            raise ValueError(
                f"probe target {self.latent!r}: unknown kind {self.kind!r}; "
                f"valid: {list(TARGET_KINDS)}"
            )
        if (self.kind == "classification") != (self.n_classes is not None):
            raise ValueError(
                f"probe target {self.latent!r}: n_classes is required for classification "
                "targets and only for them"
            )
        if self.n_classes is not None and self.n_classes < 2:
            raise ValueError(f"probe target {self.latent!r}: n_classes must be >= 2")
        if self.period <= 0:
            raise ValueError(f"probe target {self.latent!r}: period must be positive")

    @property
    def name(self) -> str:
        """Key of the target in results tables: the latent, with ``@at`` when filtered."""
        return self.latent if self.at is None else f"{self.latent}@{self.at}"


# ----------------------------------------------------------------------------- rate maps
# How a task's activity is binned for the cell census. Each kind names the latents it bins
# over; ``at`` (a boolean latent) selects the tokens used (None: every token).


@dataclass(frozen=True)
class ArenaMaps:
    """2-D rate maps over a continuous position latent [.., 2] in a rectangular arena:
    Skaggs information, place fields, gridness (60/90 degrees), border score."""

    latent: str = "pos_xy"
    extent: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 1.0), (0.0, 1.0))
    bins: int = 20
    at: str | None = None


@dataclass(frozen=True)
class GraphMaps:
    """Rate maps over the nodes of a graph (``node`` latent) whose nodes sit at ``node_xy``
    ([n_nodes, 2] as nested tuples). Information is computed over nodes; place fields,
    gridness and border scores on a raster image of the graph in which every bin takes the
    node nearest to it (so a hexagonal graph is drawn as hexagons, not as an offset grid)."""

    node_xy: tuple[tuple[float, float], ...]
    latent: str = "node"
    at: str | None = None
    raster_per_unit: float = 2.0
    """Raster bins per unit of length (edges have length 1)."""


@dataclass(frozen=True)
class TrackMaps:
    """1-D rate maps over an integer track position, separately for each direction of
    travel (``direction`` latent, +1 / -1): information and field skewness per direction."""

    n_positions: int
    latent: str = "pos"
    direction: str = "direction"
    at: str | None = None


@dataclass(frozen=True)
class TimeMaps:
    """Tuning to time since a cue within trials (``trial`` latent: one id per trial, -1 for
    none): time fields (peak, width, temporal information) and ramping, with a null that
    shifts activity within each trial."""

    n_bins: int
    latent: str = "t_since_cue"
    trial: str = "trial"
    at: str | None = None


@dataclass(frozen=True)
class RouteMaps:
    """Splitter cells: activity at shared positions (``latent``, ints < ``n_positions``)
    split by ``route`` (0/1), with route labels permuted among passes (``group``)."""

    n_positions: int
    latent: str = "node"
    route: str = "route"
    group: str = "lap"
    at: str | None = None


@dataclass(frozen=True)
class TuningMaps:
    """Tuning to a discrete latent with ``n_values`` values (ints ``0..n_values - 1``):
    information and variance explained, against a circular-shift null."""

    latent: str
    n_values: int
    at: str | None = None


MapSpec = ArenaMaps | GraphMaps | TrackMaps | TimeMaps | RouteMaps | TuningMaps


# ----------------------------------------------------------------------------- remapping
# Not a rate-map kind of the census: batches of :meth:`tasks.Task.sample_environments`, in
# which several environments share the structure but not the symbols.


@dataclass(frozen=True)
class EnvironmentMaps:
    """Remapping across environments: rate maps over an integer position ``latent``
    (``0..n_bins - 1``) in each environment (``env``, ``0..n_envs - 1``), and in two halves
    of each environment's walks (``walk``: even and odd walks) for the maps' reliability
    (see :mod:`analysis.remapping`)."""

    latent: str
    n_bins: int
    at: str | None = None
    env: str = "env"
    walk: str = "walk"

    def __post_init__(self):
        if self.n_bins < 2:
            raise ValueError(f"environment maps over {self.latent!r}: n_bins must be >= 2")
