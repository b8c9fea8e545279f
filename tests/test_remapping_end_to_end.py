"""Remapping on real activations: a network's hooks and the three constructs' hooks, cached
by the lab's own activation cache on ``Task.sample_environments`` batches, scored per hook
by :mod:`analysis.remapping`.

As a script, prints the table for finished (trained) runs beside the network at
initialisation and the constructs with as many units as the run's ``d_model``:

    PYTHONPATH=$PWD .venv/bin/python tests/test_remapping_end_to_end.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from analysis.remapping import remap_null, remapping_scores
from lab.streams import PROBE, generator
from models.constructed import CONSTRUCTS, build_construct
from models.run import build_run, resolve_run
from probes.cache import cache_activations, layer_hooks
from probes.run import load_trained

ALPHA = 0.05


def remapping_table(task, networks: dict, seed: int, n_envs=6, walks_per_env=8, n_shuffles=199):
    """One row per network and hook: medians over units of remap_r and stability_r, the
    fraction of units with a reliable map (stability_r > 0.5) and their median remap_index,
    and the fraction of units whose remap_r beats its null (``kept``).
    ``networks``: name -> (model, hooks)."""
    batch = task.sample_environments(n_envs, walks_per_env, generator(seed, PROBE, 0))
    (spec,) = task.environment_maps()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, hooks) in networks.items():
            store = cache_activations(model, iter([batch]), hooks, Path(tmp) / name, "cpu", False)
            for hook in hooks:
                acts, lat = store.load(hook, [spec.latent, spec.env, spec.walk, spec.at])
                acts, at = acts.double(), lat[spec.at].bool()
                pos, env = lat[spec.latent][at], lat[spec.env][at]
                scores = remapping_scores(acts[at], pos, env, lat[spec.walk][at], spec.n_bins)
                g = torch.Generator().manual_seed(seed)
                null = remap_null(acts, at, pos, env, spec.n_bins, n_shuffles, generator=g)
                reliable = scores.stability_r > 0.5
                rows.append(
                    {
                        "network": name,
                        "hook": hook,
                        "remap_r": scores.remap_r.nanmedian().item(),
                        "stability_r": scores.stability_r.nanmedian().item(),
                        "reliable": reliable.double().mean().item(),
                        "remap_index": scores.remap_index[reliable].nanmedian().item(),
                        "kept": (null.p_values < ALPHA).double().mean().item(),
                    }
                )
    return pd.DataFrame(rows)


def with_constructs(task, networks: dict, n_units: int, seed: int) -> dict:
    """``networks`` plus the three constructs (``n_units`` units, drawn by ``seed``)."""
    hooks = layer_hooks(1)
    constructs = {
        name: (build_construct(name, task, n_units, seed), hooks) for name in sorted(CONSTRUCTS)
    }
    return {**networks, **constructs}


def test_real_hooks_and_constructs_go_through_the_cache_and_the_scores():
    """An LSTM at initialisation on graph_nav: every hook is scored; the sensory construct,
    a function of the current symbol, is reliable within environments and remaps across."""
    run = resolve_run(
        {"experiment": "e", "study": "s", "condition": "c", "model": "lstm", "seed": 0},
        "graph_nav",
        {"width": 4, "height": 4, "n_symbols": 8, "n_steps": 40},
        "lstm",
        {"d_model": 16},
        None,
        {},
    )
    task, model = build_run(run)
    networks = with_constructs(task, {"untrained": (model, layer_hooks(1))}, 16, seed=0)
    table = remapping_table(task, networks, seed=0, n_envs=4, walks_per_env=6, n_shuffles=49)
    assert len(table) == 8 and table[["remap_r", "stability_r"]].notna().all().all()
    sensory = table.set_index(["network", "hook"]).loc[("sensory", "blocks.0.hook_resid_post")]
    assert sensory["reliable"] == 1 and sensory["remap_index"] > 0.7
    assert sensory["kept"] < 0.2


def main(run_dirs: list[str]) -> None:
    pd.set_option("display.width", 160)
    for run_dir in run_dirs:
        run, task, model, _ = load_trained(Path(run_dir))
        hooks = layer_hooks(run["model_config"]["n_layers"])
        networks = {"trained": (model.cpu(), hooks), "untrained": (build_run(run)[1], hooks)}
        networks = with_constructs(task, networks, run["model_config"]["d_model"], run["seed"])
        print(f"== {run_dir}")
        print(remapping_table(task, networks, run["seed"]).round(3).to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
