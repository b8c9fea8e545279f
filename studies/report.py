"""A results section in Markdown, generated from the results tables: first the gate
table (per study and condition, the gate's reference predictors, the fraction of their gap
to a perfect score a run must close, and each architecture's value and gap closed), then
per study the headline metrics of every condition and model (mean over seeds, with the 95%
bootstrap interval when there are several seeds) and how many runs passed the gate.

``python -m studies report --preset small`` writes ``<experiment>/results/README.md``;
``--readme`` also replaces the section between the results markers of the repository's
README.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lab.io import atomic_write
from studies.study import Study

START, END = "<!-- results:start -->", "<!-- results:end -->"


def fmt(mean: float, low: float, high: float) -> str:
    if pd.isna(mean):
        return "–"
    text = f"{mean:.3g}"
    return text if pd.isna(low) else f"{text} [{low:.3g}, {high:.3g}]"


def study_section(study: Study, tables: dict[str, pd.DataFrame]) -> str:
    runs = tables["runs"]
    runs = runs[runs["study"] == study.name]
    if runs.empty:
        return ""
    summary = tables["summary"]
    summary = summary[(summary["study"] == study.name) & (summary["hook"].fillna("") == "")]
    gated = ("gap closed",) if study.gate is not None else ()
    header = ["condition", "model", "params", "converged", *gated, *study.headline]
    lines = [f"### {study.name}", "", study.question, ""]
    if study.gate is not None:
        lines += [f"Converged: {study.gate.describe()} ({study.gate.why}).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (condition, model), group in runs.groupby(["condition", "model"], sort=False):
        cells = [condition, model, f"{int(group['n_params'].median()):,}", passed(group)]
        metrics = ["gate_closed"] * len(gated) + list(study.headline)
        cells += [mean_cell(summary, condition, model, metric) for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def passed(runs: pd.DataFrame) -> str:
    """How many of ``runs`` passed their gate, of how many ('–' without a gate)."""
    flags = runs["converged"].dropna()
    return f"{int((flags == True).sum())}/{len(runs)}" if len(flags) else "–"  # noqa: E712


def mean_cell(summary: pd.DataFrame, condition: str, model: str, metric: str) -> str:
    """The mean [interval] of ``metric`` over seeds from ``summary`` ('–' if absent)."""
    row = summary[
        (summary["condition"] == condition)
        & (summary["model"] == model)
        & (summary["metric"] == metric)
    ]
    return "–" if row.empty else fmt(*row[["mean", "ci_low", "ci_high"]].iloc[0])


def gate_table(studies: list[Study], tables: dict[str, pd.DataFrame]) -> str:
    """Per study and condition: the gated metric, its reference predictors' values (mean
    over runs), the fraction of the gap a run must close, and per architecture (its plain
    arm) the network's value and the gap it closed (means [intervals] over seeds) and how
    many runs passed."""
    runs, metrics = tables["runs"], tables["metrics"]
    summary = tables["summary"][tables["summary"]["hook"].fillna("") == ""]
    plain = runs[runs["model"] == runs["architecture"]]
    architectures = list(dict.fromkeys(plain["model"]))
    header = ["study", "condition", "gate metric", "references", "closes", *architectures]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for study in studies:
        gate = study.gate
        ran = runs[runs["study"] == study.name]
        if gate is None or ran.empty:
            continue
        for condition in dict.fromkeys(ran["condition"]):
            at = metrics[(metrics["study"] == study.name) & (metrics["condition"] == condition)]
            values = []
            for name in gate.references:
                value = pd.to_numeric(at[at["metric"] == f"{name}_{gate.metric}"]["value"])
                values.append(f"{name} {value.mean():.3g}" if value.notna().any() else f"{name} –")
            cells = [study.name, condition, gate.metric, ", ".join(values), f"≥ {gate.closes:g}"]
            here = summary[summary["study"] == study.name]
            for model in architectures:
                group = ran[(ran["condition"] == condition) & (ran["model"] == model)]
                if group.empty:
                    cells.append("–")
                    continue
                value = mean_cell(here, condition, model, gate.metric)
                closed = mean_cell(here, condition, model, "gate_closed")
                cells.append(f"{value} ({closed}; {passed(group)})")
            lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    intro = (
        "**Gates.** A run counts as trained when its gate metric closes at least the given "
        "fraction of the gap between the best of the study's reference predictors and a "
        "perfect score: (network − reference) / (perfect − reference). Each reference lacks "
        "what the study is about: `history_free` sees only the present token, `clock` only "
        "the step count, `position_free` nothing, `velocity_only` only the present input. "
        "Per architecture: the network's value (the gap it closes; runs that passed)."
    )
    return "\n".join([intro, "", *lines]) + "\n"


def report(studies: list[Study], tables: dict[str, pd.DataFrame], command: str) -> str:
    """The Markdown results section of ``studies`` from ``tables``."""
    runs = tables["runs"]
    seeds = sorted(runs["seed"].unique().tolist())
    parts = [
        f"Generated by `{command}` from `results/*.csv` ({len(runs)} runs, seeds {seeds}). "
        "Values are means over seeds with 95% bootstrap intervals when there are several; "
        "'converged' counts the runs that passed the study's gate, 'gap closed' is how much "
        "of the gap from its reference to a perfect score they closed.",
        "",
    ]
    parts += [table] if (table := gate_table(studies, tables)) else []
    parts += [section for study in studies if (section := study_section(study, tables))]
    return "\n".join(parts)


def write_report(text: str, results_dir: Path, readme: Path | None = None) -> None:
    """Write ``results_dir/README.md``; with ``readme``, replace its results section."""
    atomic_write(Path(results_dir) / "README.md", lambda tmp: tmp.write_text(text))
    if readme is None:
        return
    current = Path(readme).read_text()
    if START not in current or END not in current:
        raise ValueError(f"{readme}: no {START} ... {END} section to replace")
    head, rest = current.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{text}\n{END}{tail}"
    atomic_write(Path(readme), lambda tmp: tmp.write_text(updated))
