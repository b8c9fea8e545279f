"""Paper figures, one per study, drawn from the results tables only (PDF + PNG).

``FIGURES`` maps a figure name to ``draw(StudyTables) -> matplotlib Figure``; a study names
its figure (by default its own name; ``explore`` is the generic figure of any task). To add
a figure: write ``analysis/figures/<name>.py`` with a ``draw`` function built from the
panels in :mod:`analysis.figures.panels`, and add one line here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.figures import (
    belief_geometry,
    copying,
    explore,
    grid_cells,
    navigation,
    predictive_map,
    splitter,
    state_tracking,
    time_cells,
)
from analysis.figures.panels import StudyTables, save

FIGURES = {
    "navigation": navigation.draw,
    "predictive_map": predictive_map.draw,
    "splitter": splitter.draw,
    "grid_cells": grid_cells.draw,
    "time_cells": time_cells.draw,
    "copying": copying.draw,
    "state_tracking": state_tracking.draw,
    "belief_geometry": belief_geometry.draw,
    "explore": explore.draw,
}


def draw_figure(name: str, study, tables: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Draw figure ``name`` for ``study`` (a :class:`studies.study.Study`) from the results
    tables and write ``out_dir/<study>.png`` and ``.pdf``; return the path stem."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; valid figures: {sorted(FIGURES)}")
    fig = FIGURES[name](StudyTables(tables, study))
    return save(fig, Path(out_dir) / study.name)
