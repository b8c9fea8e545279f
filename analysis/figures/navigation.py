"""Navigation: zero-shot link inference against the memory agents, by fraction of nodes
visited and by loop length; position decoding; place and grid census."""

from __future__ import annotations

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    curve_panel,
    figure,
    finish,
    label_panel,
    metric_bars,
    probe_depth_panel,
    score_panel,
)


def draw(st: StudyTables):
    chance = (
        st.metric("chance_accuracy")["value"].mean() if len(st.metric("chance_accuracy")) else None
    )
    fig, axes = figure(2, 5, f"navigation: {st.study.question}")
    for col, condition in enumerate(st.conditions[:2]):
        curve_panel(
            axes[0, col],
            st,
            "zero_shot_accuracy_by_frac_visited",
            condition,
            chance,
            "fraction of nodes visited",
            f"zero-shot accuracy ({condition})",
        )
    first = st.conditions[0] if st.conditions else None
    curve_panel(
        axes[0, 2],
        st,
        "zero_shot_accuracy_by_loop_length",
        first,
        chance,
        "loop length (moves since last visit)",
        f"zero-shot accuracy ({first})",
    )
    curve_panel(
        axes[0, 3],
        st,
        "all_accuracy_by_frac_visited",
        first,
        chance,
        "fraction of nodes visited",
        f"accuracy, all moves ({first})",
    )
    metric_bars(axes[1, 0], st, "zero_shot_accuracy", "zero-shot accuracy", chance)
    probe_depth_panel(axes[1, 1], st, "pos_xy@is_obs", first)
    label_panel(axes[1, 2], st, ["place", "grid", "border"], first)
    score_panel(axes[1, 3], st, "grid_60", first, label="grid")
    ablation_panel(axes[0, 4], st, first)
    axes[1, 4].axis("off")
    finish(fig, axes, st)
    return fig
