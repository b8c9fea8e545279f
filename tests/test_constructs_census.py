"""A construct's run directory (tests/constructs_census.py) is censused like a probed run:
both draws, both hooks; a clock tiles time, so the census, which knows nothing of learning,
labels its units time cells in both draws."""

from constructs_census import DRAWS, construct_run, label_table

from analysis.census import CensusConfig, census_run
from probes.config import ProbeConfig


def test_a_clock_gets_time_cells_in_both_draws(tmp_path):
    probe = ProbeConfig(n_sequences=64, batch_size=32, folds=2)
    fields = {"n_steps": 64, "delay_min": 4, "delay_max": 10}
    run_dir = construct_run(tmp_path, "interval_timing", fields, "clock", 32, probe)
    assert all((run_dir / folder / "index.json").is_file() for folder in DRAWS)
    census_run(run_dir, CensusConfig(n_shuffles=39), progress=False)
    table = label_table(run_dir).set_index(["hook", "label"])
    time = table.loc[("blocks.0.hook_resid_post", "time")]
    assert time["draw_0"] >= 5 and time["draw_1"] >= 5  # of 32; chance gives about 2
