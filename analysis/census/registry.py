"""Scorer registry: every scorer the census runs, by name. To add a label, write a
:class:`~analysis.census.scorer.Scorer` in its own module and add one line at the end here
(docs/guides/adding-a-metric.md).

The census runs the scorers in this order, each on every map of its type a task declares,
and their nulls draw from one seeded stream in that order: a scorer added at the end leaves
every earlier scorer's shuffles, and so its p-values, as they were.
"""

from __future__ import annotations

from analysis.census.route import ROUTE
from analysis.census.scorer import Scorer
from analysis.census.spatial import ARENA, GRAPH
from analysis.census.timing import TIME_CELLS
from analysis.census.track import TRACK
from analysis.census.tuning import TUNING

SCORERS: dict[str, Scorer] = {
    "arena": ARENA,
    "track": TRACK,
    "time": TIME_CELLS,
    "route": ROUTE,  # before "graph": the alternation task declares its route maps first
    "graph": GRAPH,
    "tuning": TUNING,
}
