"""What a census scorer is: for one kind of rate map (a :data:`tasks.MapSpec` type), the
scores it gives every unit of a hook, each with the null it is tested against, the labels
those scores can give, and the population summaries it reports.

The census (:mod:`analysis.census.run`) runs every registered scorer
(:data:`analysis.census.registry.SCORERS`) on the maps of its type, and writes the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class Label:
    """A label a scorer can give a unit.

    name:   the label (cells.csv ``label``; census.csv ``frac_<name>``).
    scores: the scores it rests on, each higher = more <name> and tested one-sided (upper
            tail) against its own null; a unit is <name> where one of them is significant
            (a track's place cell: on either direction of travel), plus the scorer's own
            conditions. ``{field}`` in a score's name is that field of the map spec
            (``"{latent}_eta2"``).
    """

    name: str
    scores: tuple[str, ...]

    def score_names(self, spec) -> tuple[str, ...]:
        """The names of :attr:`scores` for the map spec ``spec``."""
        return tuple(score.format(**vars(spec)) for score in self.scores)


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


@dataclass
class Population:
    """What one scorer gave every unit of every hook of one network: ``values``
    [(hook, unit), score] and ``labels`` [(hook, unit)], the set of labels of each unit."""

    values: pd.DataFrame
    labels: pd.Series

    def has(self, label: Label) -> np.ndarray:
        """[(hook, unit)] bool: the units carrying ``label``."""
        return self.labels.map(lambda given: label.name in given).to_numpy(bool)


@dataclass(frozen=True)
class Scorer:
    """How the census scores units on one kind of rate map.

    spec:      the map spec type it serves (:data:`tasks.MapSpec`).
    score:     ``(spec, samples, config, nulls) -> [Score]``: every unit of one hook
               (:class:`Samples`, :class:`~analysis.census.config.CensusConfig`,
               :class:`~analysis.census.nulls.Nulls`).
    labels:    the labels its scores can give (their fractions are reported, zeros
               included).
    summarise: ``Population -> {metric: value}``: statistics over every unit of every hook
               (census.csv rows with hook '').
    """

    spec: type
    score: Callable[..., list[Score]]
    labels: tuple[Label, ...] = ()
    summarise: Callable[[Population], dict[str, float]] | None = None

    @property
    def kind(self) -> str:
        """The map kind (cells.csv ``map``): the spec type's name without "Maps", lower case."""
        return self.spec.__name__.removesuffix("Maps").lower()


def labelled(keep: torch.Tensor, label: Label) -> list[str]:
    """``label``'s name for the units ``keep`` [units] (bool) holds for, '' elsewhere."""
    return [label.name if k else "" for k in keep.tolist()]
