"""Training-step time of our hooked transformer against a plain PyTorch one, on CPU (issue:
honest benchmarks).

    .venv/bin/python benchmarks/bench_transformer.py [--rounds 7] [--threads 2] [--schemes]

One step = forward + backward + AdamW at batch 64 x seq 128, d_model 64, 2 layers, 4 heads,
d_mlp 256, vocab 50. Contenders, timed in interleaved rounds in one process
(``harness.interleaved``), so load from other processes hits them alike:

* ``plain-pytorch``: pre-LN blocks written here with plain modules (fused QKV projection,
  ``scaled_dot_product_attention(is_causal=True)``, GELU MLP, learned positions, final LN,
  bias-free unembedding) -- the baseline;
* ``ours``: ``build_model("transformer")`` (the TransformerBridge), no hooks: fused path;
* ``ours+pattern-hooked``: the same model with a TransformerLens hook on every
  ``attn.hook_pattern``, so attention runs on the explicit path;
* ``tl-native``: ``TransformerBridge.boot_native`` as TransformerLens builds it (explicit
  attention always), for reference.

Printed: each contender's median [min, max] step time, and its per-round time ratio to
plain-pytorch (median [min, max]); the target is ours <= 1.10x; the load average before and
after. ``--schemes`` adds our model, unhooked, under every positional scheme (with its
parameter count: only "learned" has the n_ctx x d_model position table).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness import Timing, interleaved, print_table  # noqa: E402

from models import build_model, count_parameters  # noqa: E402
from models.attention import POSITIONAL  # noqa: E402

BATCH, SEQ, D_MODEL, LAYERS, HEADS, VOCAB = 64, 128, 64, 2, 4, 50
TARGET = 1.10
"""Ours without hooks may take at most this many times the plain model's step time."""


class PlainBlock(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then + mlp(ln2(x)); x [batch, pos, d_model]."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(
            self.qkv(self.ln1(x)), "b p (three h d) -> three b h p d", three=3, h=self.n_heads
        )
        z = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        x = x + self.out(rearrange(z, "b h p d -> b p (h d)"))
        return x + self.mlp(self.ln2(x))


class PlainTransformer(nn.Module):
    """Token ids [batch, pos] -> logits [batch, pos, vocab]."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, vocab: int, n_ctx: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(PlainBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))


def ours(positional: str = "learned") -> nn.Module:
    fields = {"d_model": D_MODEL, "n_layers": LAYERS, "n_heads": HEADS, "n_ctx": SEQ}
    fields |= {"d_vocab": VOCAB, "d_vocab_out": VOCAB, "positional": positional}
    return build_model("transformer", fields)


def tl_native() -> nn.Module:
    from transformer_lens import TransformerBridge, TransformerBridgeConfig

    config = TransformerBridgeConfig(
        d_model=D_MODEL,
        d_head=D_MODEL // HEADS,
        n_heads=HEADS,
        n_layers=LAYERS,
        n_ctx=SEQ,
        d_vocab=VOCAB,
        d_vocab_out=VOCAB,
        d_mlp=4 * D_MODEL,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    return TransformerBridge.boot_native(config)


def pattern_hooked() -> nn.Module:
    model = ours()
    for block in model.blocks:
        block.attn.hook_pattern.add_hook(lambda pattern, hook: None)
    return model


def training_step(model: nn.Module, tokens: torch.Tensor):
    """A closure running one forward + backward + AdamW step of ``model`` on ``tokens``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def slowdown(timings: dict[str, Timing], name: str, baseline: str) -> list[float]:
    """Per-round time ratio ``name`` / ``baseline`` (> 1: slower than the baseline)."""
    pairs = zip(timings[name].seconds, timings[baseline].seconds, strict=True)
    return [ours / base for ours, base in pairs]


def time_steps(models: dict[str, nn.Module], tokens, rounds: int, baseline: str, title: str):
    """Interleaved training steps of every model; the table, and each one's per-round time
    ratio to ``baseline``: median [min, max]."""
    steps = {name: training_step(model, tokens) for name, model in models.items()}
    timings = interleaved(steps, rounds=rounds, warmup=2)
    print_table(timings, baseline=baseline, work=tokens.numel(), unit="tok", title=title)
    for name in models:
        if name != baseline:
            ratios = slowdown(timings, name, baseline)
            print(
                f"  time {name} / {baseline}: median {statistics.median(ratios):.3f} "
                f"[min {min(ratios):.3f}, max {max(ratios):.3f}] over {rounds} rounds"
            )
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--schemes", action="store_true", help="also time every scheme")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    models = {
        "plain-pytorch": PlainTransformer(D_MODEL, LAYERS, HEADS, VOCAB, SEQ),
        "ours": ours(),
        "ours+pattern-hooked": pattern_hooked(),
        "tl-native": tl_native(),
    }
    sizes = {name: count_parameters(model) for name, model in models.items()}
    print(
        f"one training step (fwd + bwd + AdamW), batch {BATCH} x seq {SEQ}, d_model {D_MODEL}, "
        f"{LAYERS} layers, {HEADS} heads, vocab {VOCAB}, {args.threads} torch threads; "
        f"parameters: {sizes}; load average before: {os.getloadavg()}"
    )
    timings = time_steps(
        models, tokens, args.rounds, "plain-pytorch", "x = speed relative to plain-pytorch"
    )
    target = statistics.median(slowdown(timings, "ours", "plain-pytorch")) <= TARGET
    print(f"target: ours <= {TARGET}x the time of plain-pytorch: {'met' if target else 'NOT met'}")
    if args.schemes:
        models = {name: ours(name) for name in POSITIONAL}
        sizes = {name: count_parameters(model) for name, model in models.items()}
        title = f"our model, no hooks, by scheme; parameters: {sizes}"
        time_steps(models, tokens, args.rounds, "learned", title)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
