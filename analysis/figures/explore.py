"""The generic figure of any task: probe scores by depth for each target, the census
labels found, and the final metrics."""

from __future__ import annotations

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    figure,
    finish,
    label_panel,
    metric_bars,
    probe_depth_panel,
)


def draw(st: StudyTables):
    probes = st["probes"]
    targets = list(dict.fromkeys(probes["target"])) if len(probes) else []
    cells = st.rows("cells", network="trained")
    labels = sorted(set(cells["label"].dropna()) - {""}) if len(cells) else []
    fig, axes = figure(1, len(targets) + 3, f"{st.study.name}: {st.study.question}")
    for col, target in enumerate(targets):
        probe_depth_panel(axes[0, col], st, target)
    label_panel(axes[0, len(targets)], st, labels)
    metric_bars(axes[0, len(targets) + 1], st, "loss", "held-out loss")
    ablation_panel(axes[0, len(targets) + 2], st)
    finish(fig, axes, st)
    return fig
