"""The cell census through the pipeline: synthetic "networks" whose units are known place,
grid, time, ramp and splitter cells get their labels; noise and shuffled units do not."""

import dataclasses
import math

import pandas as pd
import pytest
import torch

from analysis.binning import graph_raster
from analysis.census import SCORERS, CensusConfig, Label, Score, Scorer, census_run
from analysis.census.run import check_labels
from lab import provenance
from lab.io import write_json
from probes.cache import write_store
from tasks import TuningMaps, build_task

HOOK = "blocks.0.hook_resid_post"
CONFIG = CensusConfig(n_shuffles=99, alpha=0.05, untrained=False)


def synthetic_run(tmp_path, task_name, task_fields, units_of, n_batches=4, batch=64, seed=0):
    """The census (cells, census tables) of :func:`write_synthetic_run`."""
    write_synthetic_run(tmp_path, task_name, task_fields, units_of, n_batches, batch, seed)
    return run_census(tmp_path)


def write_synthetic_run(tmp_path, task_name, task_fields, units_of, n_batches=4, batch=64, seed=0):
    """A run directory whose "network" at HOOK has the units ``units_of(latents, g)``
    [batch, pos, units], over held-out batches of the task."""
    task = build_task(task_name, task_fields)
    run = {"task": task_name, "task_config": dataclasses.asdict(task.config), "seed": seed}
    write_json(tmp_path / "config.json", run)
    g = torch.Generator().manual_seed(seed)
    shards = []
    for _ in range(n_batches):
        latents = task.sample(batch, g).latents
        shards.append(({HOOK: units_of(latents, g).float()}, latents))
    made_from = provenance.origin("probe", provenance.fingerprint(run), 0, probe={})
    with provenance.rewriting(tmp_path, ["activations"], made_from):
        write_store(shards, [HOOK], tmp_path / "activations")


def run_census(run_dir):
    """Census ``run_dir``; its (cells.csv, census.csv)."""
    census_run(run_dir, CONFIG, progress=False)
    return pd.read_csv(run_dir / "cells.csv"), pd.read_csv(run_dir / "census.csv")


def labels(cells, label):
    """Units carrying ``label``."""
    return set(cells[cells["label"] == label]["unit"])


def noise(shape, g, scale=1.0):
    return scale * torch.randn(*shape, generator=g)


def test_arena_place_and_grid_cells_are_labelled_noise_is_not(tmp_path):
    fields = {"n_steps": 50, "map_bins": 16}

    def units(lat, g):
        xy = lat["pos_xy"]  # [b, t, 2], box 2.2 m
        place = [
            torch.exp(-((xy - torch.tensor(c)) ** 2).sum(-1) / (2 * 0.15**2))
            for c in ((0.5, 0.5), (-0.6, 0.3), (0.2, -0.7))
        ]
        k = 4 * math.pi / (math.sqrt(3) * 0.7)  # 0.7 m grid scale
        grid = []
        for offset in ((0.0, 0.0), (0.23, -0.11)):  # two spatial phases
            x, y = xy[..., 0] - offset[0], xy[..., 1] - offset[1]
            waves = [
                torch.cos(k * (math.cos(a) * x + math.sin(a) * y))
                for a in (0.1, 0.1 + math.pi / 3, 0.1 + 2 * math.pi / 3)
            ]
            grid.append(sum(waves))
        shuffled = place[0].flatten()[torch.randperm(place[0].numel(), generator=g)]
        signal = torch.stack(place + grid + [shuffled.view_as(place[0])], -1)
        return torch.cat([signal + noise(signal.shape, g, 0.05), noise(xy.shape[:2] + (6,), g)], -1)

    cells, census = synthetic_run(tmp_path, "path_integration", fields, units, n_batches=8)
    assert {0, 1, 2} <= labels(cells, "place")
    assert {3, 4} <= labels(cells, "grid")
    assert not {0, 1, 2} & labels(cells, "grid")  # single fields are not grids
    noise_units = {5, 6, 7, 8, 9, 10, 11}  # the shuffled place cell and pure noise
    for label in ("place", "grid", "border"):
        assert len(labels(cells, label) & noise_units) <= 1
    pooled = census[census["hook"].isna()].set_index("metric")["value"]
    assert pooled["frac_place"] == pytest.approx(len(labels(cells, "place")) / 12)


def test_graph_place_cells_on_square_and_hex_graphs(tmp_path):
    for topology in ("square", "hex"):
        run_dir = tmp_path / topology
        task_fields = {"width": 6, "height": 6, "n_steps": 64, "topology": topology}
        task = build_task("graph_nav", task_fields)
        xy = task.graph.node_xy.double()

        def units(lat, g, xy=xy):
            centres = (7, 21, 28)
            d = [(xy[lat["node"]] - xy[c]).norm(dim=-1) for c in centres]
            place = torch.stack([torch.exp(-(x**2) / 2) for x in d], -1)
            return torch.cat([place, noise(place.shape[:2] + (5,), g)], -1)

        cells, _ = synthetic_run(run_dir, "graph_nav", task_fields, units)
        assert {0, 1, 2} <= labels(cells, "place"), topology
        assert len(labels(cells, "place") & {3, 4, 5, 6, 7}) <= 1


def test_hex_raster_draws_each_node_as_a_compact_cell():
    task = build_task("graph_nav", {"width": 5, "height": 5, "topology": "hex"})
    raster = graph_raster(task.graph.node_xy, 3.0)
    assert raster.shape[0] == raster.shape[1]
    counts = torch.bincount(raster[raster >= 0], minlength=25)
    assert (counts > 0).all()  # every node is drawn
    assert counts.max() <= 3 * counts.min() + 4  # roughly equal areas


def test_time_cells_and_ramps_are_told_apart_and_noise_is_neither(tmp_path):
    fields = {"n_steps": 64, "delay_min": 6, "delay_max": 10}

    def units(lat, g):
        t = lat["t_since_cue"].double()
        in_trial = lat["in_trial"].double()
        time_cells = [
            torch.exp(-((t - p) ** 2) / (2 * (0.5 + 0.2 * p) ** 2)) * in_trial
            for p in (2.0, 4.0, 7.0)
        ]
        ramp = (t.clamp(min=0) / 10) * in_trial
        signal = torch.stack(time_cells + [ramp], -1)
        return torch.cat([signal + noise(signal.shape, g, 0.05), noise(t.shape + (6,), g)], -1)

    cells, census = synthetic_run(tmp_path, "interval_timing", fields, units)
    assert {0, 1, 2} <= labels(cells, "time")
    assert labels(cells, "ramp") >= {3} and 3 not in labels(cells, "time")
    assert len((labels(cells, "time") | labels(cells, "ramp")) & set(range(4, 10))) <= 1
    peaks = cells[(cells["score"] == "time_peak")].set_index("unit")["value"]
    assert peaks[[0, 1, 2]].tolist() == [2.0, 4.0, 7.0]
    pooled = census[census["hook"].isna()].set_index("metric")["value"]
    assert pooled["time_slope"] > 0  # widths grow with peak time by construction


def test_splitter_units_split_by_route_position_units_do_not(tmp_path):
    def units(lat, g):
        stem = lat["on_stem"].double()
        row = lat["pos_xy"][..., 1].double()
        route = lat["route"].double()
        splitter = stem * (1 + row) * (1 + 2 * route)  # stem activity scaled by route
        position = stem * (1 + row)  # the same on both routes
        signal = torch.stack([splitter, position], -1)
        return torch.cat([signal + noise(signal.shape, g, 0.05), noise(row.shape + (5,), g)], -1)

    cells, _ = synthetic_run(tmp_path, "alternation", {"n_steps": 64}, units)
    assert 0 in labels(cells, "splitter")
    assert 1 not in labels(cells, "splitter")
    assert len(labels(cells, "splitter") & {2, 3, 4, 5, 6}) <= 1


def test_track_fields_skewed_against_travel_are_measured(tmp_path):
    def units(lat, g):
        pos = lat["pos"].double()
        heading = lat["direction"].double()
        # a field with a tail behind the animal: longer on the side it comes from
        d = (pos - 4.0) * heading
        field = torch.where(d < 0, torch.exp(d / 2.0), torch.exp(-d * 2.0))
        return torch.stack([field, noise(pos.shape, g)], -1)

    fields = {"n_positions": 8, "n_steps": 64}
    cells, census = synthetic_run(tmp_path, "linear_track", fields, units)
    skew = cells[cells["unit"] == 0].set_index("score")["value"]
    assert skew["field_skew_east"] < 0 < skew["field_skew_west"]
    assert 0 in labels(cells, "place")
    pooled = census[census["hook"].isna()].set_index("metric")["value"]
    assert pooled["skew_against_travel"] > 0


def test_a_scorer_gives_only_its_labels_and_the_scores_they_rest_on():
    spec = TuningMaps("state", 3)
    scorer = Scorer(TuningMaps, lambda *args: [], (Label("tuned", ("{latent}_eta2",)),))
    value = torch.zeros(2)
    check_labels("mine", scorer, spec, [Score("state_eta2", value, value, ["tuned", ""])])
    with pytest.raises(ValueError, match=r"'mine' gave label\(s\) \['place'\] it does not"):
        check_labels("mine", scorer, spec, [Score("state_eta2", value, value, ["place", ""])])
    with pytest.raises(ValueError, match=r"'tuned' rests on score\(s\) \['state_eta2'\]"):
        check_labels("mine", scorer, spec, [Score("state_eta2", value)])  # no null


def test_a_map_no_scorer_serves_is_named(tmp_path, monkeypatch):
    write_synthetic_run(tmp_path, "mess3", {}, lambda lat, g: noise(lat["step"].shape + (3,), g))
    monkeypatch.delitem(SCORERS, "tuning")
    with pytest.raises(ValueError, match=r"no census scorer serves TuningMaps\(latent="):
        run_census(tmp_path)
