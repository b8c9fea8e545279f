"""Paper figures from trained, probed runs (PDF + PNG).

    python -m analysis.figures --preset small [--set ...]

``navigation_overview``: for every model, the rate maps over the arena of the units of its
last layer whose activity position explains best (η², see
:func:`analysis.spatial.variance_explained`; Skaggs information in each title), beside the
R² of the position probe at every depth (trained vs. the same network at initialisation)
and the next-observation accuracies, with zero-shot link inference against chance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.binning import rate_maps, spatial_information, variance_explained  # noqa: E402
from models.checkpoint import atomic_write  # noqa: E402
from models.config import Preset, load_preset  # noqa: E402
from probes.cache import ActivationStore  # noqa: E402

N_UNITS = 8
ACCURACIES = ("first_visit_accuracy", "revisit_accuracy", "zero_shot_accuracy")


def arena_rate_maps(run_dir: Path, hook: str):
    """Rate maps [units, width, height] of ``hook`` at observation tokens, the share of each
    unit's variance that position explains (η² [units]) and its spatial information
    ([units], bits per unit activity of the rectified map)."""
    run = json.loads((run_dir / "config.json").read_text())
    width, height = run["task_config"]["width"], run["task_config"]["height"]
    acts, latents = ActivationStore.open(run_dir / "activations").load(hook, ["pos_xy", "is_obs"])
    keep = latents["is_obs"].bool()
    maps, occupancy = rate_maps(
        latents["pos_xy"][keep],
        acts[keep],
        bins=(width, height),
        extent=((-0.5, width - 0.5), (-0.5, height - 0.5)),
    )
    eta2 = variance_explained(maps, occupancy, acts[keep].var(0, unbiased=False))
    return maps, eta2, spatial_information(maps, occupancy)


def navigation_overview(preset: Preset, seed: int) -> Path:
    models = list(preset.models)
    fig = plt.figure(
        figsize=(2.0 + 1.1 * N_UNITS + 3.5, 1.3 * len(models) + 1.2), layout="constrained"
    )
    left, right = fig.subfigures(1, 2, width_ratios=[N_UNITS * 1.1, 3.8])
    axes = left.subplots(len(models), N_UNITS, squeeze=False)
    r2_ax, acc_ax = right.subplots(2, 1)
    chance = None
    for row, model in enumerate(models):
        run_dir = preset.run_dir(model, seed)
        probe = json.loads((run_dir / "probe.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        last_hook = probe["layers"][-1]["hook"]
        maps, eta2, info = arena_rate_maps(run_dir, last_hook)
        top = eta2.argsort(descending=True)[:N_UNITS]
        for col, unit in enumerate(top.tolist()):
            ax = axes[row, col]
            ax.imshow(maps[unit].T.numpy(), origin="lower", cmap="viridis")
            ax.set_title(f"u{unit} η²={eta2[unit]:.2f} {info[unit]:.1f}b", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{model}\n{summary['n_params'] / 1e3:.0f}k params", fontsize=8)
        depths = [layer["depth"] for layer in probe["layers"]]
        (line,) = r2_ax.plot(
            depths, [layer["r2_test"] for layer in probe["layers"]], "o-", label=model
        )
        r2_ax.plot(
            depths,
            [layer["r2_test_untrained"] for layer in probe["layers"]],
            "--",
            color=line.get_color(),
            alpha=0.6,
        )
        values = [summary["final"][name] for name in ACCURACIES]
        offsets = [i + (row - (len(models) - 1) / 2) * 0.8 / len(models) for i in range(3)]
        acc_ax.bar(offsets, values, width=0.8 / len(models), color=line.get_color(), label=model)
        chance = 1 / json.loads((run_dir / "config.json").read_text())["task_config"]["n_symbols"]
    left.suptitle(
        f"Rate maps of the last layer: the {N_UNITS} units best explained by position", fontsize=9
    )
    r2_ax.set(
        xlabel="depth (0 = embedding)",
        ylabel=f"held-out R² ({probe['latent']})",
        title="position probe (dashed: untrained)",
    )
    r2_ax.legend(fontsize=7)
    acc_ax.axhline(chance, color="k", lw=0.8, ls=":", label="chance")
    acc_ax.set_xticks(range(3), ["first visit", "revisit", "zero-shot link"], fontsize=8)
    acc_ax.set(ylabel="next-observation accuracy", ylim=(0, 1))
    acc_ax.legend(fontsize=7)
    out = preset.experiment_dir() / "figures" / f"navigation_overview_seed{seed}"
    save(fig, out)
    return out


def save(fig, stem: Path) -> None:
    """Write ``stem``.png and ``stem``.pdf atomically."""
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        atomic_write(path, lambda tmp, s=suffix: fig.savefig(tmp, format=s[1:], dpi=200))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset, args.set)
    for seed in preset.seeds:
        print(f"wrote {navigation_overview(preset, seed)}.{{png,pdf}}")


if __name__ == "__main__":
    main()
