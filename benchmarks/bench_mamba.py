"""Training-step throughput of our Mamba against HF's and mambapy's, and the transformer
and LSTM at the same parameter count, on CPU (issue: hooked Mamba).

    .venv/bin/python benchmarks/bench_mamba.py [--quick]

One step = forward + backward + AdamW at batch 64 x seq 128, d_model 64, 2 layers,
d_state 16, vocab 50. Every configuration runs in its own subprocess (so its peak RSS is
its own), after 2 warm-up steps; the median of the timed steps is reported. Ratios are
against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
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


def measure(name: str, batch: int, seq: int, steps: int) -> dict:
    """Time ``steps`` training steps of one configuration (run in a subprocess)."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    built = build(name)
    forward, module = built if isinstance(built, tuple) else (built, built)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    tokens = torch.randint(0, VOCAB, (batch, seq))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        logits = forward(tokens)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {
        "name": name,
        "seq": seq,
        "params": sum(p.numel() for p in module.parameters()),
        "step_s": step,
        "tok_s": batch * seq / step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(name: str, batch: int, seq: int, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", name, str(batch), str(seq), str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps, no slow baselines")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, batch, seq, steps = args.one
        print(json.dumps(measure(name, int(batch), int(seq), int(steps))))
        return
    steps = 3 if args.quick else 6
    names = ["mamba-fast", "mamba-reference", "mambapy-pscan", "transformer", "lstm"]
    if not args.quick:
        names.insert(3, "hf-slow")
    rows = {name: run(name, 64, 128, 2 if name == "hf-slow" else steps) for name in names}
    hf = rows.get("hf-slow", {}).get("tok_s")
    pscan = rows["mambapy-pscan"]["tok_s"]
    print(f"\none training step, batch 64 x seq 128, CPU threads 2 (median of {steps})")
    print(
        f"{'model':18} {'params':>8} {'tok/s':>9} {'x mambapy':>10} {'x HF slow':>10} "
        f"{'peak RSS MB':>12}"
    )
    for name, row in rows.items():
        vs_hf = f"{row['tok_s'] / hf:10.1f}" if hf else f"{'-':>10}"
        print(
            f"{name:18} {row['params']:8d} {row['tok_s']:9.0f} {row['tok_s'] / pscan:10.2f} "
            f"{vs_hf} {row['peak_rss_mb']:12.0f}"
        )
    print("\nour fast scan, batch 16: throughput against sequence length")
    for seq in (128, 256, 512, 1024):
        row = run("mamba-fast", 16, seq, steps)
        print(f"  seq {seq:5d}: {row['tok_s']:9.0f} tok/s, peak RSS {row['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
