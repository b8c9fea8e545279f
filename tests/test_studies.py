"""Planning studies from presets: every study and arm, fair budgets, selections, overrides."""

import pytest
import torch

from lab.config import ConfigError
from lab.streams import TRAIN, generator
from models.registry import MODELS, build_model, count_parameters
from models.run import build_run
from studies.plan import Selection, plan
from studies.preset import load_preset
from studies.registry import STUDIES
from tasks import TASKS


@pytest.fixture(scope="module")
def smoke_plan():
    preset, raw = load_preset("smoke")
    return plan(preset, raw)


def test_every_study_condition_and_arm_is_planned(smoke_plan):
    planned = {(p.run["study"], p.run["condition"], p.run["model"]) for p in smoke_plan}
    for study in STUDIES.values():
        for condition in study.conditions:
            for architecture in MODELS:
                assert (study.name, condition.name, architecture) in planned
            for arm in study.arms:
                assert (study.name, condition.name, arm.name) in planned
    dirs = [p.run_dir for p in smoke_plan]
    assert len(set(dirs)) == len(dirs)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_arms_of_a_study_get_the_same_budget_data_and_steps(smoke_plan, study):
    runs = [p for p in smoke_plan if p.run["study"] == study]
    for condition in {p.run["condition"] for p in runs}:
        same = [p.run for p in runs if p.run["condition"] == condition]
        budget = same[0]["param_budget"]
        for run in same:
            n = count_parameters(build_model(run["architecture"], run["model_config"]))
            assert abs(n - budget) <= 0.1 * budget, (run["model"], n)
            assert run["task_config"] == same[0]["task_config"]
            assert run["train"]["steps"] == same[0]["train"]["steps"]
            assert run["train"]["batch_size"] == same[0]["train"]["batch_size"]
        # the same training batches, whatever the model
        first, last = build_run(same[0])[0], build_run(same[-1])[0]
        a = first.sample(2, generator(same[0]["seed"], TRAIN, 3))
        b = last.sample(2, generator(same[-1]["seed"], TRAIN, 3))
        assert torch.equal(a.inputs, b.inputs)


def test_every_gate_names_reference_predictors_its_tasks_declare(smoke_plan):
    for planned in smoke_plan:
        gate = planned.study.gate
        if gate is not None:
            declared = {ref.name for ref in build_run(planned.run)[0].reference_predictors()}
            assert set(gate.references) <= declared, (planned.label, declared)


def test_selection_narrows_every_stage_alike():
    preset, raw = load_preset("smoke")
    lstm = plan(preset, raw, Selection(models=("lstm",)))
    assert lstm and {p.run["model"] for p in lstm} == {"lstm"}
    timing = plan(preset, raw, Selection(tasks=("interval_timing",)))
    assert {p.run["study"] for p in timing} == {"time_cells"}
    one = plan(preset, raw, Selection(studies=("copying",), models=("transformer",), seeds=(3,)))
    assert {p.run["model"] for p in one} >= {"transformer", "transformer-rope"}
    assert {p.run["seed"] for p in one} == {3}


def test_a_task_no_study_uses_runs_in_the_explore_study(monkeypatch):
    monkeypatch.setitem(TASKS, "graph_nav_copy", TASKS["graph_nav"])
    preset, raw = load_preset("smoke")
    runs = plan(preset, raw, Selection(tasks=("graph_nav_copy",)))
    assert {p.run["study"] for p in runs} == {"explore"}
    assert all("explore/graph_nav_copy" in str(p.run_dir) for p in runs)


def test_study_tables_override_only_their_study_and_select_conditions_and_arms():
    preset, raw = load_preset(
        "smoke",
        [
            "study.copying.train.steps=7",
            "study.copying.arms=['lstm', 'transformer-rope']",
            "study.navigation.conditions=['hex']",
        ],
    )
    runs = plan(preset, raw, Selection(studies=("copying", "navigation")))
    copying = [p for p in runs if p.run["study"] == "copying"]
    assert {p.run["model"] for p in copying} == {"lstm", "transformer-rope"}
    assert {p.run["train"]["steps"] for p in copying} == {7}
    navigation = [p for p in runs if p.run["study"] == "navigation"]
    assert {p.run["condition"] for p in navigation} == {"hex"}
    assert {p.run["train"]["steps"] for p in navigation} == {preset.train.steps}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["study.navigation.conditions=['tri']"], r"unknown navigation conditions \['tri'\]"),
        (["study.copying.arms=['gru']"], r"unknown copying arms \['gru'\]; valid"),
        (["study.copying.train.stpes=3"], r"unknown field\(s\) \['stpes'\]"),
        (["study.copying.experiment='x'"], r"\[study.copying\] cannot set 'experiment'"),
        (["param_budget=50"], r"no d_model gives 50 parameters"),
    ],
)
def test_bad_study_settings_are_named(overrides, message):
    preset, raw = load_preset("smoke", overrides)
    with pytest.raises(ConfigError, match=message):
        plan(preset, raw)


def test_unknown_study_lists_the_valid_ones():
    preset, raw = load_preset("smoke")
    with pytest.raises(ValueError, match="unknown study 'maze'; valid studies: .*navigation"):
        plan(preset, raw, Selection(studies=("maze",)))
