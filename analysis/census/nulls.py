"""The shuffle nulls a scorer tests its scores against, at the census's settings, each
drawing from its own seeded stream (:mod:`analysis.stats`, :mod:`analysis.field_shuffle`
hold the nulls themselves)."""

from __future__ import annotations

import torch

from analysis.census.config import CensusConfig
from analysis.census.scorer import Samples
from analysis.field_shuffle import field_shuffle_null
from analysis.stats import (
    ShuffleNull,
    group_permutation_null,
    segment_shuffle_null,
    sequence_shift_null,
)
from lab.streams import CENSUS, generator


class Nulls:
    """The shuffle nulls of one network's census: the i-th null drawn uses stream
    (``seed``, CENSUS, i), so the order scorers draw in fixes every null."""

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
