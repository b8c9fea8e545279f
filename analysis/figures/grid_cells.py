"""Grid cells: gridness with field-shuffle nulls under the DoS readout and its controls."""

from __future__ import annotations

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    bar_panel,
    empty,
    figure,
    finish,
    metric_bars,
    probe_depth_panel,
    score_panel,
    steering_panel,
)


def draw(st: StudyTables):
    fig, axes = figure(1, 7, f"grid cells: {st.study.question}")
    score_panel(axes[0, 0], st, "grid_60", st.conditions[0] if st.conditions else None, "grid")
    frame = st.metric("frac_grid")
    if frame.empty:
        empty(axes[0, 1], "no grid cells labelled in any run")
    else:
        bar_panel(axes[0, 1], frame, "condition", st.colour)
        axes[0, 1].set_ylabel("fraction of grid units (p < alpha)", fontsize=7)
    metric_bars(axes[0, 2], st, "grid_60_median", "median gridness (60 deg)")
    metric_bars(axes[0, 3], st, "pos_error", "path-integration error (m)")
    probe_depth_panel(axes[0, 4], st, "pos_xy", st.conditions[0] if st.conditions else None)
    ablation_panel(axes[0, 5], st, st.conditions[0] if st.conditions else None)
    steering_panel(axes[0, 6], st, st.conditions[0] if st.conditions else None)
    finish(fig, axes, st)
    return fig
