"""Probe fitting on an activation store streamed from disk, and the cost of ablation sweeps.

    python benchmarks/bench_probes.py [--samples 1000000] [--features 256] [--rounds 2]

1. Throughput. A store of ``samples`` rows x ``features`` float32 features (shards of 64
   sequences x 160 tokens, as ``probes.cache`` writes them) is written to a temporary
   directory; the page cache holds it after the first pass. In interleaved rounds
   (benchmarks/harness.py) the baseline reads every shard once (one pass over the data) and
   each probe is fit with its control task: ridge on a 2-D position, logistic on a
   25-class node, the MLP on the position (3 epochs, no early stopping: fixed work).
   Reported: seconds, samples x features per second, and the time in read passes.
2. Memory. Peak RSS during each fit (VmHWM, reset before the fit), alone in a subprocess,
   at samples / 4 and at samples, and its increase over the RSS before the fit: it must
   not grow with the number of samples.
3. Ablation sweeps. Every unit of blocks.0.hook_resid_post (d_model 64) ablated alone on 4
   batches of graph_nav (32 sequences x 64 tokens) by ``ablation_sweep`` (one pass per
   condition, or 4 conditions stacked in 128-row passes), against one forward pass over the
   same batches (the baseline) and a plain loop of one hooked pass per unit and batch. The
   sweep's ideal cost is units + 2 forward passes (unit statistics, clean, each unit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import interleaved, print_table, ratio  # noqa: E402
from models import build_model  # noqa: E402
from probes.cache import ActivationStore, iterate_batches  # noqa: E402
from probes.causal.ablation import ablation_sweep  # noqa: E402
from probes.fit import fit_probe  # noqa: E402
from probes.mlp import MLPConfig  # noqa: E402
from probes.stream import store_batches  # noqa: E402
from tasks import build_task  # noqa: E402
from tasks.targets import ProbeTarget  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
SEQUENCES, TOKENS, SIDE = 64, 160, 5
TARGETS = {
    "ridge": ProbeTarget("pos_xy", spatial=True),
    "logistic": ProbeTarget("node", kind="classification", n_classes=SIDE * SIDE),
    "mlp": ProbeTarget("pos_xy"),
}
MLP = MLPConfig(max_epochs=3, patience=None)


def write_store(path: Path, samples: int, features: int) -> ActivationStore:
    """Shards of [64, 160, features] activations coding a walk on a 5 x 5 grid."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    code = torch.randn(SIDE * SIDE, features, generator=g)
    shards = -(-samples // (SEQUENCES * TOKENS))
    path.mkdir(parents=True)
    for i in range(shards):
        pos = torch.randint(SIDE, (SEQUENCES, TOKENS, 2), generator=g)
        node = pos[..., 0] * SIDE + pos[..., 1]
        acts = code[node] + 2 * torch.randn(SEQUENCES, TOKENS, features, generator=g)
        env = (i * SEQUENCES + torch.arange(SEQUENCES))[:, None].expand(-1, TOKENS)
        tensors = {
            f"act/{HOOK}": acts,
            "latent/pos_xy": pos.float(),
            "latent/node": node,
            "latent/env_id": env.contiguous(),
        }
        save_file(tensors, path / f"shard{i:05d}.safetensors")
    index = {
        "hooks": [HOOK],
        "latents": ["env_id", "node", "pos_xy"],
        "n_shards": shards,
        "n_sequences": shards * SEQUENCES,
    }
    (path / "index.json").write_text(json.dumps(index))
    return ActivationStore.open(path)


def fit(store: ActivationStore, kind: str):
    target = TARGETS[kind]
    return fit_probe(
        kind, store_batches(store, HOOK, target), target, config=MLP if kind == "mlp" else None
    )


def read_pass(store: ActivationStore) -> None:
    for _ in store_batches(store, HOOK, TARGETS["ridge"]):
        pass


def memory(path: str, kind: str, threads: int) -> dict:
    """Peak RSS during one fit (run alone in a subprocess): the kernel's high-water mark,
    reset just before the fit, and its increase over the RSS at that moment."""
    torch.set_num_threads(threads)
    store = ActivationStore.open(Path(path))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_mb("VmRSS")
    start = time.perf_counter()
    result = fit(store, kind)
    peak = status_mb("VmHWM")
    return {
        "peak_mb": peak,
        "delta_mb": peak - before,
        "seconds": time.perf_counter() - start,
        "score": result.score,
    }


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def sub(*args) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--sub", json.dumps(args)], capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"{args} failed:\n{textwrap.indent(out.stderr[-3000:], '  ')}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_fits(store: ActivationStore, features: int, rounds: int) -> None:
    samples = store.n_sequences * TOKENS
    contenders = {"read pass": lambda: read_pass(store)}
    contenders.update({f"{kind} + control": lambda kind=kind: fit(store, kind) for kind in TARGETS})
    timings = interleaved(contenders, rounds=rounds, warmup=0)
    print_table(
        timings,
        work=samples * features,
        unit="sample*feature",
        title=f"probe fits on {samples:,} samples x {features} features streamed from disk",
    )
    for name in contenders:
        if name != "read pass":
            passes = ratio(timings, "read pass", name)
            print(f"  {name:<28} = {passes:.1f} read passes")


def bench_memory(stores: dict[int, ActivationStore], threads: int) -> None:
    print("-- peak RSS of one fit, alone in a subprocess (MB; + increase during the fit)")
    for kind in TARGETS:
        line = f"  {kind:<10}"
        for samples, store in stores.items():
            m = sub("memory", str(store.path), kind, threads)
            line += (
                f"  {samples:>9,} samples: {m['peak_mb']:6.0f} (+{m['delta_mb']:4.0f}) "
                f"{m['seconds']:6.1f} s, score {m['score']:.3f}"
            )
        print(line)


def bench_sweeps(rounds: int) -> None:
    task = build_task("graph_nav", {"width": 5, "height": 5, "n_steps": 32})
    batches = list(iterate_batches(task, 128, 32, lambda i: torch.Generator().manual_seed(i)))
    units = 64
    print(f"-- ablation sweep: {units} units of {HOOK} x {len(batches)} batches of 32 x 64 tokens")
    for name in ("transformer", "lstm", "mamba"):
        fields = {"d_vocab": task.d_vocab_in, "d_vocab_out": task.d_vocab_out, "d_model": units}
        fields.update({"n_heads": 4, "n_ctx": 64} if name == "transformer" else {})
        model = build_model(name, {**fields, "n_layers": 2}).eval()

        @torch.no_grad()
        def forward(model=model):
            for b in batches:
                model(b.inputs)

        @torch.no_grad()
        def one_pass_per_unit(model=model):
            for unit in range(units):

                def zero(act, hook, unit=unit):
                    act[..., unit] = 0
                    return act

                for b in batches:
                    task.loss(model.run_with_hooks(b.inputs, fwd_hooks=[(HOOK, zero)]), b)

        def sweep(model=model, max_rows=None):
            ablation_sweep(model, batches, HOOK, task.loss, max_rows=max_rows)

        timings = interleaved(
            {
                "forward": forward,
                "ablation_sweep": sweep,
                "ablation_sweep rows=128": lambda sweep=sweep: sweep(max_rows=128),
                "one pass per unit": one_pass_per_unit,
            },
            rounds=rounds,
            warmup=1,
        )
        print_table(timings, title=name)
        for contender in list(timings)[1:]:
            cost = ratio(timings, "forward", contender)
            print(f"  {contender:<28} = {cost:.1f} forward passes ({cost / units:.2f} per unit)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of the fits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sub", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sub:
        kind, *rest = json.loads(args.sub)
        print(json.dumps({"memory": memory}[kind](*rest)))
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"load average at start: {os.getloadavg()}; {args.threads} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        sizes = (args.samples // 4, args.samples)
        stores = {n: write_store(Path(tmp) / f"store{n}", n, args.features) for n in sizes}
        bench_fits(stores[args.samples], args.features, args.rounds)
        bench_memory(stores, args.threads)
    bench_sweeps(rounds=3)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
