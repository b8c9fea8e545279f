"""Cache activations of trained runs on held-out environments and probe every layer.

    python -m probes.run --preset small [--model transformer] [--seed 0] [--set ...]

For each run: ``activations/`` (the activation store, see :mod:`probes.cache`) and
``probe.json`` (R² of a ridge probe for the preset's latent at every layer, for the trained
model and for the same architecture at initialisation, the baseline any code must beat).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from models.checkpoint import atomic_write, load_checkpoint
from models.config import ProbeConfig, load_preset
from models.train import PROBE_STREAM, build_run, generator, resolve_device
from probes.cache import cache_activations, iterate_batches, layer_hooks, model_activations
from probes.decode import decode_layers


def probe_run(run_dir: Path, config: ProbeConfig, progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no trained run here (run `make train` first)")
    run = json.loads(config_path.read_text())
    device = resolve_device(run["train"]["device"])
    task, model = build_run(run)
    load_checkpoint(
        run_dir / "checkpoint.safetensors",
        model,
        expect_meta={"model": run["model"], "task": run["task"], "seed": run["seed"]},
    )
    model.to(device)
    hooks = layer_hooks(run["model_config"]["n_layers"])

    def batches():
        return iterate_batches(
            task,
            config.n_sequences,
            config.batch_size,
            lambda i: generator(run["seed"], PROBE_STREAM, i),
        )

    store = cache_activations(model, batches(), hooks, run_dir / "activations", device, progress)
    trained = decode_layers(
        ((shard_acts(shard, hooks), shard_latents(shard)) for shard in store.shards()),
        hooks,
        config,
    )
    untrained_model = build_run(run)[1].to(device).eval()
    untrained = decode_layers(
        ((model_activations(untrained_model, b.to(device), hooks), b.latents) for b in batches()),
        hooks,
        config,
    )
    result = {
        "latent": config.latent,
        "token_filter": config.token_filter,
        "probe_config": dataclasses.asdict(config),
        "layers": [
            {
                "hook": hook,
                "depth": depth,
                **dataclasses.asdict(trained[hook]),
                "r2_test_untrained": untrained[hook].r2_test,
            }
            for depth, hook in enumerate(hooks)
        ],
    }
    atomic_write(run_dir / "probe.json", lambda p: p.write_text(json.dumps(result, indent=2)))
    return result


def shard_acts(shard, hooks):
    return {h: shard[f"act/{h}"] for h in hooks}


def shard_latents(shard):
    return {k[len("latent/") :]: v for k, v in shard.items() if k.startswith("latent/")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", action="append")
    parser.add_argument("--seed", type=int, action="append")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)  # decaying SSM states reach denormals, slow on CPU
    preset = load_preset(args.preset, args.set)
    for model in args.model or preset.models:
        for seed in args.seed or preset.seeds:
            result = probe_run(preset.run_dir(model, seed), preset.probe)
            r2s = " ".join(f"{layer['r2_test']:.2f}" for layer in result["layers"])
            print(f"{model} seed{seed}: R²({result['latent']}) by depth: {r2s}")


if __name__ == "__main__":
    main()
