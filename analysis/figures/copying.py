"""Copying: accuracy against string length from training lengths to 4x, per architecture
and positional scheme."""

from __future__ import annotations

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    curve_panel,
    figure,
    finish,
)


def draw(st: StudyTables):
    fig, axes = figure(1, 3, f"copying: {st.study.question}", width=4.0)
    chance = (
        st.metric("chance_accuracy")["value"].mean() if len(st.metric("chance_accuracy")) else None
    )
    curve_panel(
        axes[0, 0], st, "token_accuracy_by_length", None, chance, "string length", "token accuracy"
    )
    curve_panel(
        axes[0, 1],
        st,
        "string_accuracy_by_length",
        None,
        None,
        "string length",
        "whole-string accuracy",
    )
    ablation_panel(axes[0, 2], st)
    finish(fig, axes, st)
    return fig
