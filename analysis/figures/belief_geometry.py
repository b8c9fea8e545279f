"""Belief geometry: the Bayesian belief decoded by depth against the untrained network and
the control task, and the belief simplex in the probe's projection."""

from __future__ import annotations

import numpy as np

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    empty,
    figure,
    finish,
    metric_bars,
    probe_depth_panel,
    steering_panel,
)

CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def simplex_xy(p: np.ndarray) -> np.ndarray:
    """Beliefs [n, 3] -> points [n, 2] in the equilateral triangle."""
    return p @ CORNERS


def draw(st: StudyTables):
    models = st.models or ["-"]
    fig, axes = figure(1, 4 + len(models), f"belief geometry: {st.study.question}")
    probe_depth_panel(axes[0, 0], st, "belief")
    metric_bars(axes[0, 1], st, "kl_to_bayes", "KL(Bayes || model), nats")
    points = st["points"]
    for col, model in enumerate(models, start=2):
        ax = axes[0, col]
        rows = points[points["model"] == model] if len(points) else points
        if rows.empty:
            empty(ax, f"no points for {model}")
            continue
        rows = rows[rows["seed"] == rows["seed"].min()]
        true = rows[["true_0", "true_1", "true_2"]].to_numpy()
        pred = rows[["pred_0", "pred_1", "pred_2"]].to_numpy()
        colour = np.clip(true, 0, 1)
        xy = simplex_xy(pred)
        ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=3)
        ax.plot(*np.vstack([CORNERS, CORNERS[:1]]).T, color="0.5", lw=0.6)
        ax.set_title(f"{model}: probe projection ({rows['hook'].iloc[0]})", fontsize=6)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    ablation_panel(axes[0, -2], st)
    steering_panel(axes[0, -1], st)
    finish(fig, axes, st)
    return fig
