"""State tracking: accuracy of the running product by length, per group and architecture."""

from __future__ import annotations

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    curve_panel,
    figure,
    finish,
    metric_bars,
)


def draw(st: StudyTables):
    conditions = st.conditions or ["-"]
    fig, axes = figure(1, len(conditions) + 2, f"state tracking: {st.study.question}")
    for col, condition in enumerate(conditions):
        curve_panel(
            axes[0, col],
            st,
            "accuracy_by_length",
            condition,
            None,
            "prefix length",
            f"accuracy ({condition})",
        )
    metric_bars(axes[0, -2], st, "accuracy", "accuracy (all positions)")
    ablation_panel(axes[0, -1], st)
    finish(fig, axes, st)
    return fig
