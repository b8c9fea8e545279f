"""Training-step throughput of our Mamba against HF's and mambapy's, and the transformer
and LSTM at the same parameter count, on CPU (issue: hooked Mamba).

    .venv/bin/python benchmarks/bench_mamba.py [--quick] [--threads 2] [--repeats 2]

One step = forward + backward + AdamW at batch 64 x seq 128, d_model 64, 2 layers,
d_state 16, vocab 50. Timing: all models are built in one subprocess and stepped in
interleaved rounds (one step of each per round; 2 warm-up rounds), so load from other
processes on a shared machine hits every model alike and the ratios are same-time ratios;
reported: median tok/s over the timed rounds, and the best round. ``--repeats`` runs the
whole timing pass again to show the run-to-run spread. Memory: each model once more in
its own subprocess, peak RSS (ru_maxrss) after 2 steps and its increase over the RSS
after building the model. Scaling: our fast path at batch 16, seq 128 -> 1024.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, D_MODEL, LAYERS, D_STATE = 50, 64, 2, 16


def build(name: str):
    from torch import nn

    if name.startswith("mamba-"):
        from models.mamba import MambaConfig, MambaLM

        config = MambaConfig(
            d_model=D_MODEL,
            n_layers=LAYERS,
            d_state=D_STATE,
            d_vocab=VOCAB,
            d_vocab_out=VOCAB,
            scan=name.removeprefix("mamba-"),
        )
        return MambaLM(config)
    if name == "hf-slow":
        from transformers import MambaConfig, MambaForCausalLM

        hf = MambaForCausalLM(
            MambaConfig(
                vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, state_size=D_STATE
            )
        )
        return lambda tokens: hf(tokens).logits, hf
    if name == "mambapy-pscan":
        from mambapy.mamba import Mamba, MambaConfig

        class MambapyLM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(VOCAB, D_MODEL)
                self.backbone = Mamba(
                    MambaConfig(d_model=D_MODEL, n_layers=LAYERS, d_state=D_STATE, pscan=True)
                )
                self.norm = nn.RMSNorm(D_MODEL)
                self.head = nn.Linear(D_MODEL, VOCAB)

            def forward(self, tokens):
                return self.head(self.norm(self.backbone(self.embed(tokens))))

        return MambapyLM()
    if name in ("transformer", "lstm"):
        from models import build_model, count_parameters, fit_to_budget, model_config
        from models.mamba import MambaConfig, MambaLM

        budget = count_parameters(
            MambaLM(
                MambaConfig(
                    d_model=D_MODEL,
                    n_layers=LAYERS,
                    d_state=D_STATE,
                    d_vocab=VOCAB,
                    d_vocab_out=VOCAB,
                )
            )
        )
        fields = {"n_layers": LAYERS, "d_vocab": VOCAB, "d_vocab_out": VOCAB}
        if name == "transformer":
            fields["n_ctx"] = 1024
        config = fit_to_budget(name, model_config(name, fields), budget)
        return build_model(name, config)
    raise ValueError(name)


MODELS = ["mamba-fast", "mamba-fast+state", "mamba-reference", "hf-slow", "mambapy-pscan"]
MODELS += ["transformer", "lstm"]


def _step_fn(name: str):
    """(one training step on ``tokens``, module) for model ``name``."""
    import torch

    state_hook = name.endswith("+state")
    built = build(name.removesuffix("+state"))
    forward, module = built if isinstance(built, tuple) else (built, built)
    if state_hook:  # caching the state trajectory: the fast path must materialise it
        for block in module.blocks:
            block.mixer.hook_ssm_state.add_hook(lambda act, hook: None)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)

    def step(tokens):
        logits = forward(tokens)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, module


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_rounds(names: list[str], batch: int, seq: int, steps: int, threads: int) -> dict:
    """Interleaved timing of several models in this process: {name: row}."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {name: _step_fn(name) for name in names}
    tokens = torch.randint(0, VOCAB, (batch, seq))
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(steps + 2):
        for name, (step, _) in models.items():
            start = time.perf_counter()
            step(tokens)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    return {
        name: {
            "params": sum(p.numel() for p in module.parameters()),
            "tok_s": batch * seq / statistics.median(times[name]),
            "best_tok_s": batch * seq / min(times[name]),
        }
        for name, (_, module) in models.items()
    }


def memory(name: str, batch: int, seq: int, threads: int) -> dict:
    """Peak RSS of 2 training steps of one model (run alone in a subprocess)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    step, _ = _step_fn(name)
    tokens = torch.randint(0, VOCAB, (batch, seq))
    built_mb = _rss_mb()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        step(tokens)
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak_mb, "delta_mb": peak_mb - built_mb, "tok_s": batch * seq / times[-1]}


def _sub(*args) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--sub", json.dumps(args)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"{args[0]} failed:\n{textwrap.indent(out.stderr[-3000:], '  ')}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps; no HF slow path")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timing passes (default 2)")
    parser.add_argument("--sub", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sub:
        kind, *rest = json.loads(args.sub)
        print(json.dumps({"time": time_rounds, "memory": memory}[kind](*rest)))
        return
    steps = 3 if args.quick else 5
    names = [n for n in MODELS if not (args.quick and n == "hf-slow")]
    print(
        f"one training step (fwd + bwd + AdamW), batch 64 x seq 128, {args.threads} torch "
        f"threads, median of {steps} interleaved rounds (best round in brackets)"
    )
    passes = [_sub("time", names, 64, 128, steps, args.threads) for _ in range(args.repeats)]
    mem = {name: _sub("memory", name, 64, 128, args.threads) for name in names}
    header = f"{'model':18} {'params':>7}"
    for r in range(args.repeats):
        header += f" {f'tok/s #{r + 1}':>16} {'x mambapy':>9} {'x HF':>6}"
    print(header + f" {'peak RSS MB':>11} {'+MB':>6}")
    for name in names:
        line = f"{name:18} {passes[0][name]['params']:7d}"
        for rows in passes:
            row, pscan = rows[name], rows["mambapy-pscan"]["tok_s"]
            hf = rows.get("hf-slow", {}).get("tok_s")
            tok = f"{row['tok_s']:.0f} ({row['best_tok_s']:.0f})"
            vs_hf = f"{row['tok_s'] / hf:6.1f}" if hf else f"{'-':>6}"
            line += f" {tok:>16} {row['tok_s'] / pscan:9.2f} {vs_hf}"
        print(line + f" {mem[name]['peak_mb']:11.0f} {mem[name]['delta_mb']:6.0f}")
    print("\nour fast path (mamba-fast), batch 16: throughput and memory against sequence length")
    for seq in (128, 256, 512, 1024):
        row = _sub("time", ["mamba-fast"], 16, seq, steps, args.threads)["mamba-fast"]
        m = _sub("memory", "mamba-fast", 16, seq, args.threads)
        print(
            f"  seq {seq:5d}: {row['tok_s']:7.0f} tok/s (best {row['best_tok_s']:.0f}), "
            f"peak RSS {m['peak_mb']:.0f} MB (+{m['delta_mb']:.0f} MB over the built model)"
        )


if __name__ == "__main__":
    main()
