"""plan --estimate (studies/estimate.py): the projection from measured costs, and the
command end to end on a tiny selection."""

import pytest

from studies.cli import main
from studies.estimate import LATER_STAGES, Measured, job_shape, makespan, project
from studies.plan import Selection, plan
from studies.preset import load_preset


def test_makespan_hands_free_slots_the_first_task_whose_wait_is_over():
    assert makespan([], 2) == 0.0
    assert makespan([(3.0, None), (1.0, None), (1.0, None)], 1) == 5.0
    assert makespan([(3.0, None), (1.0, None), (1.0, None)], 2) == 3.0
    # task 1 waits for task 0; task 2 does not wait and takes the free slot meanwhile
    assert makespan([(4.0, None), (1.0, 0), (2.0, None)], 2) == 5.0
    # two runs of a job wait for its training, then run side by side
    assert makespan([(4.0, None), (2.0, 0), (2.0, 0)], 2) == 6.0
    assert makespan([(4.0, None), (2.0, 0), (2.0, 0)], 3) == 6.0
    assert makespan([(1.0, None)] * 6, 4) == 2.0


def small_runs(seeds):
    preset, raw = load_preset("smoke", [f"seeds={list(seeds)}"])
    return plan(preset, raw, Selection(studies=("time_cells",), models=("lstm", "mamba")))


def measured_for(runs, per_step=0.01, fixed=1.0, stage=2.0):
    from studies.pipeline import train_jobs

    measured = Measured()
    for job in train_jobs(runs):
        measured.per_step[job_shape(job)] = per_step
        measured.fixed[job_shape(job)] = fixed
        key = (job[0].study.name, job[0].run["architecture"])
        measured.stages[key] = dict.fromkeys(LATER_STAGES, stage / len(LATER_STAGES))
    return measured


def test_projection_of_seed_batched_jobs_and_single_runs():
    runs = small_runs([0, 1, 2])  # two jobs of three seeds
    steps = runs[0].run["train"]["steps"]
    projection = project(runs, measured_for(runs), slots=2)
    job = 1.0 + 0.01 * steps
    assert projection.jobs == 2
    assert projection.stage_seconds["train"] == pytest.approx(2 * job)
    assert sum(projection.stage_seconds[s] for s in LATER_STAGES) == pytest.approx(6 * 2.0)
    assert projection.serial == pytest.approx(2 * job + 12.0)
    # both jobs side by side, then six runs' later stages two at a time
    assert projection.parallel == pytest.approx(job + 3 * 2.0)
    alone = small_runs([0])  # two runs, each its own job
    projection = project(alone, measured_for(alone), slots=1)
    assert projection.jobs == 2
    assert projection.parallel == pytest.approx(projection.serial) == pytest.approx(2 * job + 4.0)


def test_plan_estimate_measures_and_projects(tmp_path, capsys):
    sets = ["train.steps=4", "probe.n_sequences=16", f"out_root={str(tmp_path)!r}", "seeds=[0, 1]"]
    main(["plan", "--preset", "smoke", "--study", "time_cells", "--model", "lstm",
          "--estimate", "--set", *sets])  # fmt: skip
    out = capsys.readouterr().out
    assert "training time_cells/intervals/lstm/seed0,1:" in out
    assert "later stages of time_cells/intervals/lstm/seed0: probe" in out
    assert "projected wall time:" in out and "as a sweep (make paper) with" in out
    assert "the estimate took" in out
    assert not any(tmp_path.iterdir())  # measured in a scratch directory


def test_estimate_is_an_option_of_plan_only(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--preset", "smoke", "--estimate"])
    assert "--estimate is an option of plan, not train" in capsys.readouterr().err
