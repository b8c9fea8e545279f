"""Predictive map: field skew against the direction of travel and RSA against the analytic
successor representation, directed vs bidirectional walks."""

from __future__ import annotations

from analysis.figures.panels import (
    StudyTables,
    ablation_panel,
    curve_panel,
    figure,
    finish,
    metric_bars,
    probe_depth_panel,
)


def draw(st: StudyTables):
    fig, axes = figure(1, 5, f"predictive map: {st.study.question}")
    metric_bars(axes[0, 0], st, "skew_against_travel", "field skew against travel (place units)")
    axes[0, 0].axhline(0, color="0.4", lw=0.8)
    for col, condition in enumerate(st.conditions[:2], start=1):
        curve_panel(
            axes[0, col],
            st,
            "rsa_sr_last_layer",
            condition,
            None,
            "SR discount gamma",
            f"RSA with the SR ({condition})",
        )
    probe_depth_panel(axes[0, 3], st, "pos@is_obs", st.conditions[0] if st.conditions else None)
    ablation_panel(axes[0, 4], st)
    finish(fig, axes, st)
    return fig
