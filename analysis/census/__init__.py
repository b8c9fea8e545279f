"""The cell census: every unit of every cached hook gets the scores its task's rate maps
call for, each against the shuffle null the field uses for that score, and a label where
the score is significant (p < ``alpha``, one-sided, ``(1 + #null >= observed) / (1 + n)``).

One :class:`Scorer` per kind of rate map (``spatial``: arena and graph; ``track``,
``timing``, ``route``, ``tuning``) declares its scores, their nulls (:class:`Nulls`), the
labels they can give and its population summaries; :data:`SCORERS` registers them and
:func:`census_run` (``run``) runs them and writes ``cells.csv`` and ``census.csv``. The
scores, nulls and labels are tabled in docs/design.md ("The cell census").
"""

from analysis.census.config import CensusConfig
from analysis.census.nulls import Nulls
from analysis.census.registry import SCORERS
from analysis.census.run import CELL_COLUMNS, OUTPUTS, census_run
from analysis.census.scorer import Label, Population, Samples, Score, Scorer, labelled

__all__ = [
    "CELL_COLUMNS",
    "OUTPUTS",
    "SCORERS",
    "CensusConfig",
    "Label",
    "Nulls",
    "Population",
    "Samples",
    "Score",
    "Scorer",
    "census_run",
    "labelled",
]
