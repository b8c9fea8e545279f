"""The census settings (``[census]`` in a preset)."""

from __future__ import annotations

from dataclasses import dataclass

from lab.config import require


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
