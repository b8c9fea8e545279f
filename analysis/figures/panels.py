"""Shared pieces of the paper figures: colours, run selection and the standard panels.

Every panel reads the results tables only (see :mod:`analysis.tables`). Conventions: one
colour per model; each seed is drawn thin (dotted, with x markers, when the run did not
pass its study's convergence gate); the thick line or bar is the mean over the converged
seeds (dotted over all seeds when none converged); chance and baselines are grey.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lab.io import atomic_write  # noqa: E402

KEYS = ["experiment", "study", "condition", "model", "seed"]
UNCONVERGED_NOTE = "thin: seeds; dotted/x: run not converged"


def colours(models: list[str]) -> dict[str, str]:
    """A fixed colour per model, in order of appearance."""
    palette = plt.get_cmap("tab10").colors
    return {m: matplotlib.colors.to_hex(palette[i % 10]) for i, m in enumerate(models)}


def with_convergence(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the ``converged`` flag of its run (False where unknown -> kept as
    False only if the gate failed; runs without a gate count as converged)."""
    flags = runs[KEYS + ["converged"]].copy()
    flags["converged"] = flags["converged"].map(lambda v: v is not False and v != "False")
    return frame.merge(flags, on=KEYS, how="left")


def seed_mean(frame: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Mean of ``value`` over seeds per ``by``: over converged seeds where any, else over
    all (then ``all_unconverged`` is True)."""
    out = []
    for key, group in frame.groupby(by, sort=False):
        good = group[group["converged"]]
        use = good if len(good) else group
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row.update({value: use[value].astype(float).mean(), "all_unconverged": not len(good)})
        out.append(row)
    return pd.DataFrame(out)


def line_panel(
    ax,
    frame: pd.DataFrame,
    x: str,
    colour: dict[str, str],
    value: str = "value",
    label_models: bool = True,
    style: str = "-",
) -> None:
    """Per model: thin per-seed lines of ``value`` against ``x`` and the thick mean."""
    for model, rows in frame.groupby("model", sort=False):
        c = colour.get(model, "k")
        for (_, converged), seed_rows in rows.groupby(["seed", "converged"]):
            seed_rows = seed_rows.sort_values(x)
            ax.plot(
                seed_rows[x],
                seed_rows[value],
                style if converged else ":",
                color=c,
                lw=0.6,
                alpha=0.5,
                marker=None if converged else "x",
                ms=3,
            )
        mean = seed_mean(rows, ["model", x], value).sort_values(x)
        ax.plot(
            mean[x],
            mean[value],
            ":" if mean["all_unconverged"].all() else style,
            color=c,
            lw=2,
            label=model if label_models else None,
        )


def bar_panel(
    ax,
    frame: pd.DataFrame,
    group: str,
    colour: dict[str, str],
    value: str = "value",
    overlay: pd.DataFrame | None = None,
) -> None:
    """Bars of the seed mean of ``value`` per (``group``, model), with seed dots; the seed
    mean of an ``overlay`` frame (same columns, e.g. the untrained network) as white
    diamonds on the same bars."""
    groups = list(dict.fromkeys(frame[group]))
    models = list(dict.fromkeys(frame["model"]))
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        rows = frame[frame["model"] == model]
        for i, g in enumerate(groups):
            cell = rows[rows[group] == g]
            if cell.empty:
                continue
            xpos = i + (j - (len(models) - 1) / 2) * width
            mean = seed_mean(cell, ["model"], value).iloc[0]
            faint = mean["all_unconverged"]
            ax.bar(
                xpos,
                mean[value],
                width,
                color=colour[model],
                alpha=0.35 if faint else 0.8,
                label=model if i == 0 else None,
                hatch="//" if faint else None,
            )
            for _, r in cell.iterrows():
                ax.plot(xpos, r[value], "o" if r["converged"] else "x", color="k", ms=3)
            if overlay is not None:
                other = overlay[(overlay["model"] == model) & (overlay[group] == g)]
                if len(other):
                    ax.plot(
                        xpos,
                        other[value].astype(float).mean(),
                        "D",
                        mfc="white",
                        mec="k",
                        ms=4,
                        label="untrained" if i == j == 0 else None,
                    )
    ax.set_xticks(range(len(groups)), groups, fontsize=7)


def chance_line(ax, level: float | None, label: str = "chance") -> None:
    if level is not None:
        ax.axhline(level, color="0.4", lw=0.8, ls="--", label=label)


def note(fig, text: str) -> None:
    fig.text(0.995, 0.005, text, ha="right", va="bottom", fontsize=6, color="0.4")


def empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def save(fig, stem: Path) -> Path:
    """Write ``stem``.png and ``stem``.pdf atomically; return the stem."""
    for suffix in (".png", ".pdf"):
        path = Path(stem).with_suffix(suffix)
        atomic_write(path, lambda tmp, s=suffix: fig.savefig(tmp, format=s[1:], dpi=200))
    plt.close(fig)
    return Path(stem)


def of_study(tables: dict[str, pd.DataFrame], name: str, study: str) -> pd.DataFrame:
    """Rows of table ``name`` that belong to ``study`` (an empty frame if none)."""
    frame = tables.get(name)
    if frame is None or frame.empty:
        return pd.DataFrame(columns=KEYS)
    return frame[frame["study"] == study]


def figure(n_rows: int, n_cols: int, title: str, width: float = 3.0, height: float = 2.4):
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(width * n_cols, height * n_rows + 0.5),
        squeeze=False,
        layout="constrained",
    )
    fig.suptitle(title, fontsize=9)
    return fig, axes


def finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


# --------------------------------------------------------------- panels over the tables


class StudyTables:
    """The tables of one study, with convergence flags joined in, and its colours."""

    def __init__(self, tables: dict[str, pd.DataFrame], study):
        self.study = study
        self.runs = of_study(tables, "runs", study.name)
        self.models = list(dict.fromkeys(self.runs["model"])) if len(self.runs) else []
        self.colour = colours(self.models)
        self.conditions = list(dict.fromkeys(self.runs["condition"])) if len(self.runs) else []
        self._tables = tables

    def __getitem__(self, name: str) -> pd.DataFrame:
        frame = of_study(self._tables, name, self.study.name)
        if frame.empty:
            return frame.assign(converged=pd.Series(dtype=bool))
        return with_convergence(frame, self.runs)

    def rows(self, table: str, condition: str | None = None, **equal) -> pd.DataFrame:
        """Rows of ``table`` (of condition ``condition``, if given) whose columns equal the
        keyword values."""
        frame = self[table]
        if frame.empty:
            return frame
        keep = pd.Series(True, index=frame.index)
        for column, value in equal.items():
            keep &= frame[column].fillna("") == value
        if condition is not None:
            keep &= frame["condition"] == condition
        return frame[keep]

    def metric(self, name: str, condition: str | None = None) -> pd.DataFrame:
        """Run-level rows of metric ``name``."""
        return self.rows("metrics", condition, metric=name, hook="")


def metric_bars(
    ax, st: StudyTables, metric: str, ylabel: str | None = None, chance: float | None = None
) -> None:
    """A final metric per condition and model."""
    frame = st.metric(metric)
    if frame.empty:
        return empty(ax, f"no {metric}")
    bar_panel(ax, frame, "condition", st.colour)
    chance_line(ax, chance)
    ax.set_ylabel(ylabel or metric, fontsize=7)


def curve_panel(
    ax,
    st: StudyTables,
    curve: str,
    condition: str | None = None,
    chance: float | None = None,
    xlabel: str = "",
    ylabel: str = "",
    min_count: int = 1,
) -> None:
    """A curve per model (mean over seeds), baselines (other sources) dashed grey."""
    frame = st["curves"]
    frame = (
        frame[(frame["curve"] == curve) & (frame["count"] >= min_count)] if len(frame) else frame
    )
    if condition is not None and len(frame):
        frame = frame[frame["condition"] == condition]
    if frame.empty:
        return empty(ax, f"no {curve}")
    network = frame[frame["source"] == "network"]
    line_panel(ax, network, "x", st.colour)
    for source, rows in frame[frame["source"] != "network"].groupby("source"):
        mean = rows.groupby("x")["value"].mean()
        ax.plot(mean.index, mean.values, "--", color="0.5", lw=1, label=source)
    chance_line(ax, chance)
    ax.set_xlabel(xlabel or "x", fontsize=7)
    ax.set_ylabel(ylabel or curve, fontsize=7)


def probe_depth_panel(ax, st: StudyTables, target: str, condition: str | None = None) -> None:
    """Held-out probe score by depth per model (solid), the untrained network (dashed) and
    the control task (dotted, where measured)."""
    frame = st.rows("probes", condition, target=target)
    if frame.empty:
        return empty(ax, f"no probe of {target}")
    line_panel(ax, frame, "depth", st.colour, value="score")
    for column, style in (("untrained", "--"), ("control", ":")):
        if column in frame and frame[column].notna().any():
            mean = frame.groupby(["model", "depth"])[column].mean().reset_index()
            for model, rows in mean.groupby("model", sort=False):
                ax.plot(rows["depth"], rows[column], style, color=st.colour[model], lw=1)
    metric = frame["metric"].iloc[0]
    ax.set_xlabel("depth (0 = embedding)", fontsize=7)
    ax.set_ylabel(f"held-out {metric}: {target}", fontsize=7)
    ax.set_title("solid trained, dashed untrained, dotted control", fontsize=6)


def label_panel(ax, st: StudyTables, labels: list[str], condition: str | None = None) -> None:
    """Fraction of units (all hooks) carrying each census label, per model; white
    diamonds: the same network at initialisation."""

    def fractions(suffix):
        frames = [
            st.metric(f"frac_{label}{suffix}", condition).assign(label=label) for label in labels
        ]
        return pd.concat(frames) if frames else pd.DataFrame()

    frame = fractions("")
    if frame.empty:
        return empty(ax, "no labelled units")
    bar_panel(ax, frame, "label", st.colour, overlay=fractions("_untrained"))
    ax.set_ylabel("fraction of units", fontsize=7)


def score_panel(
    ax, st: StudyTables, score: str, condition: str | None = None, label: str | None = None
) -> None:
    """Distribution of a census score over units, per model; units with the label
    (significant) drawn filled."""
    frame = st.rows("cells", condition, score=score, network="trained")
    if frame.empty:
        return empty(ax, f"no {score}")
    values = finite(frame["value"])
    bins = np.linspace(values.min(), values.max(), 25) if len(values) else 10
    for model, rows in frame.groupby("model", sort=False):
        c = st.colour[model]
        ax.hist(finite(rows["value"]), bins=bins, histtype="step", color=c, label=model)
        if label is not None:
            sig = rows[rows["label"] == label]
            ax.hist(finite(sig["value"]), bins=bins, color=c, alpha=0.35)
    ax.set_xlabel(score + (f" (filled: {label})" if label else ""), fontsize=7)
    ax.set_ylabel("units", fontsize=7)


def finish(fig, axes, st: StudyTables) -> None:
    """Legends once, small ticks, the study's gate and the convergence note."""
    for ax in axes.flat:
        ax.tick_params(labelsize=6)
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in names:
                handles.append(h)
                names.append(n)
    if handles:
        fig.legend(
            handles,
            names,
            loc="outside lower center",
            ncol=min(8, len(names)),
            fontsize=6,
            frameon=False,
        )
    gate = st.study.gate
    gate_text = f"converged: {gate.describe()} ({gate.why})" if gate else "no convergence gate"
    note(fig, f"{gate_text}; {UNCONVERGED_NOTE}")


def ablation_panel(ax, st: StudyTables, condition: str | None = None) -> None:
    """Loss change from mean-ablating each census population minus as many units matched
    for activity variance (at the hook where the population is largest), per model."""
    frame = st.rows("causal", condition, intervention="ablation-mean")
    if frame.empty:
        return empty(ax, "no ablation (no labelled population)")
    frame = frame[frame["population"] == frame["target"] + "-matched"]
    largest = frame.sort_values("amount").groupby(KEYS + ["target"]).tail(1)
    bar_panel(ax, largest.rename(columns={"effect": "value"}), "target", st.colour)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_ylabel("Δ loss: ablate population − matched units", fontsize=7)


def steering_panel(ax, st: StudyTables, condition: str | None = None) -> None:
    """Dose-response of the study's steering readout: along the probe direction (solid)
    and along random directions of the same norm (dashed), per model."""
    frame = st.rows("causal", condition, intervention="steering")
    if frame.empty:
        return empty(ax, "no steering")
    along = frame[frame["population"] == "along"].rename(columns={"effect": "value"})
    line_panel(ax, along, "amount", st.colour, label_models=False)
    random = frame[frame["population"] == "random"]
    for model, rows in random.groupby("model", sort=False):
        mean = rows.groupby("amount")["effect"].mean()
        ax.plot(mean.index, mean.values, "--", color=st.colour[model], lw=1)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel(f"steering along {frame['target'].iloc[0]} (s.d.)", fontsize=7)
    ax.set_ylabel("change of readout (dashed: random)", fontsize=7)
