"""Splitter cells: retrospective and prospective route decoding on the stem, and the
splitter census."""

from __future__ import annotations

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    figure,
    finish,
    label_panel,
    metric_bars,
    probe_depth_panel,
    score_panel,
    steering_panel,
)


def draw(st: StudyTables):
    fig, axes = figure(1, 7, f"splitter: {st.study.question}")
    probe_depth_panel(axes[0, 0], st, "route@on_stem")
    probe_depth_panel(axes[0, 1], st, "next_turn@on_stem")
    label_panel(axes[0, 2], st, ["splitter", "place"])
    score_panel(axes[0, 3], st, "splitter", label="splitter")
    metric_bars(axes[0, 4], st, "choice_accuracy", "accuracy at the choice point")
    ablation_panel(axes[0, 5], st)
    steering_panel(axes[0, 6], st)
    finish(fig, axes, st)
    return fig
