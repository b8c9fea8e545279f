"""Time cells: fraction of time cells and ramps, field width against peak time, tiling."""

from __future__ import annotations

import numpy as np

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    curve_panel,
    empty,
    figure,
    finish,
    label_panel,
    steering_panel,
)


def draw(st: StudyTables):
    fig, axes = figure(1, 6, f"time cells: {st.study.question}")
    label_panel(axes[0, 0], st, ["time", "ramp"])
    cells = st.rows("cells", network="trained")
    scatter, density = axes[0, 1], axes[0, 2]
    if cells.empty:
        empty(scatter, "no census")
        empty(density, "no census")
    else:
        wide = cells.pivot_table(
            index=["model", "seed", "hook", "unit"], columns="score", values="value"
        ).reset_index()
        labels = cells[cells["label"] == "time"][["model", "seed", "hook", "unit"]]
        timed = wide.merge(labels.drop_duplicates(), on=["model", "seed", "hook", "unit"])
        for model, rows in timed.groupby("model", sort=False):
            c = st.colour[model]
            scatter.plot(
                rows["time_peak"], rows["time_width"], "o", color=c, ms=3, alpha=0.6, label=model
            )
            if len(rows) >= 3 and rows["time_peak"].nunique() > 1:
                slope, intercept = np.polyfit(rows["time_peak"], rows["time_width"], 1)
                x = np.array([rows["time_peak"].min(), rows["time_peak"].max()])
                scatter.plot(x, intercept + slope * x, "-", color=c, lw=1)
            density.hist(
                np.log(rows["time_peak"].clip(lower=0) + 1), bins=12, histtype="step", color=c
            )
        scatter.set_xlabel("peak time since cue (steps)", fontsize=7)
        scatter.set_ylabel("field width (FWHM, steps)", fontsize=7)
        scatter.set_title("time cells; lines: least-squares fits", fontsize=6)
        density.set_xlabel("log(1 + peak time)", fontsize=7)
        density.set_ylabel("time cells", fontsize=7)
    curve_panel(
        axes[0, 3],
        st,
        "respond_rate_by_time",
        None,
        None,
        "time since cue (steps)",
        "response rate",
    )
    ablation_panel(axes[0, 4], st)
    steering_panel(axes[0, 5], st)
    finish(fig, axes, st)
    return fig
