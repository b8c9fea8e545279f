"""The documentation holds: links resolve inside the repository, the "adding a task" guide's
template runs through every stage as written, and the glossary names every metric, score
and column a run writes."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.census import SCORERS
from analysis.figures import FIGURES, draw_figure
from models import MODELS
from models.registry import STEPPERS
from studies.pipeline import STAGE_FUNCTIONS, figures_stage, tables_stage
from studies.plan import Selection, plan
from studies.preset import load_preset
from tasks import TASKS, build_task
from tests.test_census import labels, noise, run_census, write_synthetic_run

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
# Values of these columns are run keys, hooks or latents, not names the glossary defines.
FREE_COLUMNS = {"experiment", "study", "condition", "model", "seed", "hook", "target", "gate"}
# Columns whose values are names (metric, score, curve, label, ...) the glossary must define
# (where they hold text: probes.csv's ``score`` is a number).
NAME_COLUMNS = (
    "metric",
    "score",
    "curve",
    "label",
    "map",
    "network",
    "source",
    "probe",
    "target_kind",
    "intervention",
    "population",
)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *DOCS, *sorted((ROOT / "notebooks").glob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(path):
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name}: {target} points outside the repo"
        assert resolved.exists(), f"{path.name}: {target} does not exist"


def test_the_docs_name_no_file_outside_the_repository():
    for path in markdown_files():
        assert "../shared" not in path.read_text(), path


def glossary_names() -> set[str]:
    text = (ROOT / "docs" / "glossary.md").read_text()
    names = set()
    for span in CODE.findall(text):
        names.update(part.strip() for part in span.split(","))
    return names


REFERENCES = {ref.name for name in TASKS for ref in build_task(name).reference_predictors()}


def documented(name: str, glossary: set[str]) -> bool:
    """``name`` is in the glossary, itself or through one of its families of names."""
    if name in glossary:
        return True
    for reference in REFERENCES:
        if name.startswith(f"{reference}_") and "<reference>_<metric>" in glossary:
            return reference in glossary and documented(
                name.removeprefix(f"{reference}_"), glossary
            )
    for prefix, family in (("eval_", "eval_<metric>"),):
        if name.startswith(prefix) and family in glossary:
            return documented(name.removeprefix(prefix), glossary)
    if name.endswith("_untrained") and "<metric>_untrained" in glossary:
        return documented(name.removesuffix("_untrained"), glossary)
    for suffix in ("_eta2", "_info"):
        if name.endswith(suffix) and f"<latent>{suffix}" in glossary:
            return True
    label, dash, control = name.rpartition("-")
    if dash and control in ("random", "matched") and f"<label>-{control}" in glossary:
        return label in glossary
    return False


def output_names(experiment_dir: Path) -> set[str]:
    """Every metric, score, curve and column name in an experiment's run files and tables."""
    names = set()
    for path in experiment_dir.rglob("metrics.jsonl"):
        for line in path.read_text().splitlines():
            names.update(json.loads(line))
    for path in experiment_dir.rglob("summary.json"):
        summary = json.loads(path.read_text())
        names.update(summary)
        names.update(summary["final"])
        names.update(row["curve"] for row in summary["curves"])
    for path in (experiment_dir / "results").glob("*.csv"):
        if not path.read_text().strip():
            continue  # a table no run has rows for (e.g. curves of a task without curves)
        table = pd.read_csv(path)
        names.update(set(table.columns) - FREE_COLUMNS)
        for column in NAME_COLUMNS:
            if column in table and not pd.api.types.is_numeric_dtype(table[column]):
                names.update(str(v) for v in table[column].dropna().unique())
    return names


def undocumented(experiment_dir: Path) -> list[str]:
    glossary = glossary_names()
    return sorted(n for n in output_names(experiment_dir) if not documented(n, glossary))


def guide_template(guide: str, marker: str) -> str:
    """The first ```python block after ``<!-- template:marker -->`` in a guide."""
    text = (ROOT / "docs" / "guides" / guide).read_text()
    after = text.split(f"<!-- template:{marker} -->", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def import_template(source: str, name: str, tmp_path: Path, monkeypatch):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ring_walk(tmp_path_factory):
    """The task template registered and run through every stage at the smoke preset:
    (preset, planned runs, tables)."""
    tmp_path = tmp_path_factory.mktemp("ring_walk")
    with pytest.MonkeyPatch.context() as monkeypatch:
        module = import_template(
            guide_template("adding-a-task.md", "task"), "ring_walk", tmp_path, monkeypatch
        )
        monkeypatch.setitem(TASKS, "ring_walk", (module.RingWalkConfig, module.RingWalkTask))
        preset, raw = load_preset("smoke", [f"out_root={tmp_path / 'runs'}"])
        runs = plan(preset, raw, Selection(tasks=("ring_walk",)))
        for stage in STAGE_FUNCTIONS.values():
            stage(runs, progress=False)
        tables = tables_stage(runs, preset.experiment_dir() / "results")
        figures_stage(runs, tables, preset.experiment_dir() / "figures")
        yield preset, runs, tables


def test_the_task_template_runs_end_to_end(ring_walk):
    preset, runs, tables = ring_walk
    assert {p.run["study"] for p in runs} == {"explore"}
    assert {p.run["architecture"] for p in runs} == set(preset.models)
    assert set(tables["runs"]["task"]) == {"ring_walk"}
    probes = tables["probes"]
    assert set(probes["target"]) == {"pos"} and probes["score"].notna().all()
    cells = tables["cells"]
    assert {"pos_eta2", "pos_info"} <= set(cells["score"])
    assert set(cells["network"]) == {"trained", "untrained"}
    assert (preset.experiment_dir() / "figures" / "explore.png").stat().st_size > 0
    assert undocumented(preset.experiment_dir()) == []


def test_the_figure_template_draws_from_the_tables(ring_walk, tmp_path, monkeypatch):
    preset, runs, tables = ring_walk
    module = import_template(
        guide_template("adding-a-figure.md", "figure"), "my_figure", tmp_path, monkeypatch
    )
    monkeypatch.setitem(FIGURES, "my_figure", module.draw)
    stem = draw_figure("my_figure", runs[0].study, tables, tmp_path)
    assert stem.with_suffix(".png").stat().st_size > 0


def test_the_model_template_runs_the_time_cells_study(tmp_path, monkeypatch):
    module = import_template(
        guide_template("adding-a-model.md", "model"), "gru", tmp_path, monkeypatch
    )
    monkeypatch.setitem(MODELS, "gru", (module.GRUConfig, module.HookedGRU))
    monkeypatch.setitem(STEPPERS, "gru", module.GRUStepper)
    preset, raw = load_preset("smoke", [f"out_root={tmp_path}", "models=['gru']"])
    runs = plan(preset, raw, Selection(studies=("time_cells",)))
    assert [p.run["architecture"] for p in runs] == ["gru"]
    for stage in STAGE_FUNCTIONS.values():
        stage(runs, progress=False)
    tables = tables_stage(runs, preset.experiment_dir() / "results")
    assert (
        abs(tables["runs"]["n_params"].iloc[0] - preset.param_budget) <= 0.1 * preset.param_budget
    )
    assert set(tables["probes"]["hook"]) == {"blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"}
    assert "time_eta2" in set(tables["cells"]["score"])
    assert "steering" in set(tables["causal"]["intervention"])


def test_the_scorer_template_adds_a_label_and_changes_nothing_else(tmp_path, monkeypatch):
    module = import_template(
        guide_template("adding-a-metric.md", "scorer"), "selectivity", tmp_path, monkeypatch
    )
    value = torch.tensor([0, 0, 1, 1, 2, 2])
    act = torch.tensor([[0.0, 2.0, 5.0, 7.0, 0.0, 2.0], [1.0] * 6, [4.0, 4.0, 0.0, 0.0, 0.0, 0.0]])
    # preferred value 1: (6 - 1) / sqrt((1 + 1) / 2); constant; apart without spread
    assert module.selectivity(act.T.double(), value, 3).tolist() == [5.0, 0.0, math.inf]

    def units(lat, g):
        state = lat["hidden_state"]
        signal = torch.stack([(state == 0).double(), (state == 2).double()], -1)
        return torch.cat([signal + noise(signal.shape, g, 0.1), noise(state.shape + (6,), g)], -1)

    run_dir = tmp_path / "run"
    write_synthetic_run(run_dir, "mess3", {}, units)
    cells_before, census_before = run_census(run_dir)
    monkeypatch.setitem(SCORERS, "selective", module.SELECTIVE_UNITS)
    cells, census = run_census(run_dir)
    pd.testing.assert_frame_equal(cells.iloc[: len(cells_before)], cells_before)
    added = cells.iloc[len(cells_before) :]
    assert set(added["score"]) == {"hidden_state_selectivity"}
    assert {0, 1} <= labels(added, "selective")
    assert len(labels(added, "selective") & set(range(2, 8))) <= 1
    key = ["metric", "hook"]
    census = census.fillna({"hook": ""}).set_index(key)["value"]
    before = census_before.fillna({"hook": ""}).set_index(key)["value"]
    pd.testing.assert_series_equal(census[before.index], before)
    assert census[("frac_selective", "")] == len(labels(added, "selective")) / 8


def test_the_glossary_labels_table_is_the_scorers_labels():
    """Its rows name every label the registered scorers can give and, in "rests on", the
    scores each rests on (``{latent}`` written ``<latent>``), and nothing else."""
    text = (ROOT / "docs" / "glossary.md").read_text().split("## Labels", 1)[1]
    section = text.split("\n## ")[0].splitlines()
    rows = [line.split("|")[1:3] for line in section if line.startswith("|")]
    table = {
        CODE.findall(name)[0]: set(CODE.findall(scores))
        for name, scores in rows[2:]  # after the header and its rule
    }
    declared = {}
    for scorer in SCORERS.values():
        for label in scorer.labels:
            scores = {re.sub(r"\{(\w+)\}", r"<\1>", score) for score in label.scores}
            declared.setdefault(label.name, set()).update(scores)
    assert table == declared


def test_the_glossary_check_catches_an_undocumented_name(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    names = ["frac_place_untrained", "eval_loss", "clock_accuracy", "wiggle_index", "clock_wiggle"]
    pd.DataFrame({"metric": names}).to_csv(results / "metrics.csv", index=False)
    assert undocumented(tmp_path) == ["clock_wiggle", "wiggle_index"]


@pytest.mark.slow
def test_the_glossary_names_everything_a_smoke_paper_writes(tmp_path):
    from studies.cli import main

    main(["paper", "--preset", "smoke", "--no-progress", "--set", f"out_root={tmp_path}"])
    assert undocumented(tmp_path / "smoke") == []


def test_the_model_templates_stepper_passes_the_causal_tests(tmp_path, monkeypatch):
    """The checks tests/test_causal_patching.py and test_causal_interventions.py run on
    every registered model, run on the template registered as the guide says."""
    from tests import test_causal_interventions as interventions
    from tests import test_causal_patching as patching

    module = import_template(
        guide_template("adding-a-model.md", "model"), "gru", tmp_path, monkeypatch
    )
    monkeypatch.setitem(MODELS, "gru", (module.GRUConfig, module.HookedGRU))
    monkeypatch.setitem(STEPPERS, "gru", module.GRUStepper)
    for d_input in (None, 3):
        patching.test_step_by_step_rollout_equals_the_full_forward_pass("gru", d_input)
    patching.test_patched_state_continues_exactly_as_the_run_it_came_from("gru")
    patching.test_callable_edit_equals_the_value_it_computes("gru")
    interventions.test_batched_conditions_equal_one_pass_per_condition("gru")
