"""Training-step throughput of our Mamba scans against today's code and the anchors a user
would pick instead (mambapy's pscan, HF transformers' MambaForCausalLM slow path), and the
transformer and LSTM at the same parameter count, on CPU.

    .venv/bin/python benchmarks/bench_mamba.py [--quick] [--gpu] [--threads 2] [--rounds 7]
        [--baseline 07226f4]

One step = forward + backward + AdamW at batch 64 x seq 128, d_model 64, 2 layers,
d_state 16, vocab 50, denormals flushed (as the train and probe commands do). "today" is
models/mamba/{scan,model}.py at git commit ``--baseline``, loaded from git history into
temporary modules and given the same weights. "+state" hooks ``hook_ssm_state`` with an
identity hook, so the trajectory is materialised. All contenders run in one subprocess in
interleaved rounds (benchmarks/harness.py), so ratios are same-time ratios; reported per
contender: median [min, max] seconds, tokens/s, the median per-round speed-up over today's
matching path, and the worst round against the median. The whole timing runs twice: with
glibc's default allocator and with ``keep_freed_memory()`` (lab/allocator.py).
Then: build time of the "native" scan (fresh and warm extension directory), compile time of
the "compiled" scan (fresh and warm Inductor cache), the reference
scan today vs now, peak RSS per model (each in its own subprocess) and the fast paths
against sequence length.

On a CUDA device (``--gpu`` for that section alone; on CPU it prints that it is skipped):
the selective scan alone, forward + backward at batch 64, d_inner 128, d_state 16 and
128 / 512 steps — the lab's Triton scan with and without the trajectory, mamba-ssm's
``selective_scan_fn`` where it imports, the chunked scans eager and compiled — and then
one training step of the model on the GPU with each scan, unhooked and with
``hook_ssm_state`` hooked (target: hooked within 1.5x of unhooked).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # this checkout's lab, not an installed one
from harness import Timing, interleaved, print_table, ratio  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, D_MODEL, LAYERS, D_STATE = 50, 64, 2, 16
OURS = ["fast", "fast+state", "native", "native+state", "compiled", "compiled+state"]
TODAY = ["today-fast", "today-fast+state"]
ANCHORS = ["mambapy-pscan", "hf-slow", "transformer", "lstm"]


def load_baseline(commit: str) -> types.ModuleType:
    """models/mamba/model.py at ``commit`` with its scan.py, as temporary modules."""

    def module(name: str, path: str, source: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        sys.modules[name] = mod  # dataclasses look their module up
        exec(compile(source, f"{commit}:{path}", "exec"), mod.__dict__)
        return mod

    def show(path: str) -> str:
        command = ["git", "show", f"{commit}:{path}"]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout

    scan = module(f"baseline_{commit}_scan", "models/mamba/scan.py", show("models/mamba/scan.py"))
    source = show("models/mamba/model.py")
    if "from models.mamba.scan import" not in source:
        raise RuntimeError(f"models/mamba/model.py at {commit} does not import its scans")
    source = source.replace("from models.mamba.scan import", f"from {scan.__name__} import")
    return module(f"baseline_{commit}_model", "models/mamba/model.py", source)


def mamba_config(module: types.ModuleType, scan: str):
    return module.MambaConfig(
        d_model=D_MODEL, n_layers=LAYERS, d_state=D_STATE, d_vocab=VOCAB, d_vocab_out=VOCAB,
        scan=scan,
    )  # fmt: skip


def build(name: str, baseline: str):
    """(forward: tokens -> logits, module) of contender ``name``."""
    from torch import nn

    import models.mamba as ours

    base, state = name.removesuffix("+state"), name.endswith("+state")
    if base in ("fast", "native", "compiled", "reference", "today-fast", "today-reference"):
        module = load_baseline(baseline) if base.startswith("today-") else ours
        model = module.MambaLM(mamba_config(module, base.removeprefix("today-")))
        model.load_state_dict(ours.MambaLM(mamba_config(ours, "fast")).state_dict())
        if state:  # an identity hook: the trajectory must be materialised
            for block in model.blocks:
                block.mixer.hook_ssm_state.add_hook(lambda act, hook: act)
        return model, model
    if name == "hf-slow":
        from transformers import MambaConfig, MambaForCausalLM

        config = MambaConfig(
            vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, state_size=D_STATE
        )
        hf = MambaForCausalLM(config)
        return (lambda tokens: hf(tokens).logits), hf
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

        model = MambapyLM()
        return model, model
    if name in ("transformer", "lstm"):
        from models import build_model, count_parameters, fit_to_budget, model_config

        budget = count_parameters(ours.MambaLM(mamba_config(ours, "fast")))
        fields = {"n_layers": LAYERS, "d_vocab": VOCAB, "d_vocab_out": VOCAB}
        if name == "transformer":
            fields["n_ctx"] = 1024
        model = build_model(name, fit_to_budget(name, model_config(name, fields), budget))
        return model, model
    raise ValueError(f"unknown contender {name!r}")


def training_step(name: str, baseline: str, batch: int, seq: int):
    """A closure running one training step of ``name`` on fixed tokens, and the module."""
    import torch

    forward, module = build(name, baseline)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    tokens = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))

    def step():
        logits = forward(tokens)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, module


def _setup(threads: int, keep_freed: bool) -> None:
    import torch

    from lab.allocator import keep_freed_memory

    if keep_freed and not keep_freed_memory():
        raise RuntimeError("keep_freed_memory() did not apply (not glibc?)")
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def time_rounds(names, baseline, batch, seq, rounds, warmup, threads, keep_freed) -> dict:
    """Interleaved timing of the contenders in this process: {name: seconds per round}."""
    _setup(threads, keep_freed)
    steps = {name: training_step(name, baseline, batch, seq)[0] for name in names}
    timings = interleaved(steps, rounds=rounds, warmup=warmup)
    return {name: t.seconds for name, t in timings.items()}


def compile_seconds(name: str, baseline: str, threads: int) -> dict:
    """Seconds of the first training step (building or compiling the kernels) and of the
    third."""
    _setup(threads, keep_freed=False)
    step, _ = training_step(name, baseline, 64, 128)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"first": times[0], "steady": times[-1]}


def memory(name: str, baseline: str, batch: int, seq: int, threads: int) -> dict:
    """Peak RSS of 3 training steps of one model (run alone in a subprocess)."""
    _setup(threads, keep_freed=False)
    step, _ = training_step(name, baseline, batch, seq)
    with open("/proc/self/statm") as f:
        built_mb = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    for _ in range(3):
        step()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak_mb, "delta_mb": peak_mb - built_mb}


def _sub(*args, env: dict | None = None):
    out = subprocess.run(
        [sys.executable, __file__, "--sub", json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode:
        raise RuntimeError(f"{args[0]} failed:\n{textwrap.indent(out.stderr[-3000:], '  ')}")
    return json.loads(out.stdout.strip().splitlines()[-1])


SUBCOMMANDS = {"time": time_rounds, "compile": compile_seconds, "memory": memory}


def gpu_scan_steps(seq: int) -> dict:
    """Forward + backward of each GPU scan at batch 64, d_inner 128, d_state 16, ``seq``
    steps (synchronised): {name: step}."""
    import torch

    from models.mamba.backends import BACKENDS
    from models.mamba.scan import selective_scan
    from models.mamba.triton_scan import triton_scan

    batch, d_inner, d_state = 64, 128, 16
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, scale=1.0, shift=0.0):
        t = torch.rand(*shape, device="cuda", generator=g) * scale + shift
        return t.requires_grad_()

    x, dt = rand(batch, seq, d_inner, scale=2, shift=-1), rand(batch, seq, d_inner, scale=0.1)
    A, D = rand(d_inner, d_state, scale=-4), rand(d_inner)
    B, C = rand(batch, seq, d_state, scale=2, shift=-1), rand(batch, seq, d_state, scale=2)
    inputs = (x, dt, A, B, C, D)

    def step(scan):
        def run():
            out = scan()
            loss = sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,)))
            torch.autograd.grad(loss, inputs, allow_unused=True)
            torch.cuda.synchronize()

        return run

    steps = {
        "triton": step(lambda: triton_scan(*inputs)),
        "triton, trajectory": step(lambda: triton_scan(*inputs, with_states=True)),
        "chunked, eager": step(lambda: selective_scan(x, dt, A, B, C) + D * x),
        "chunked, compiled": step(
            lambda: BACKENDS["compiled"].scan(x, dt, A, B, C, D, None, False, False)[0]
        ),
    }
    selective_scan_fn = BACKENDS["cuda"].kernel("selective_scan_fn")
    if selective_scan_fn is not None:
        layout = [t.transpose(1, 2).contiguous().detach().requires_grad_() for t in (x, dt, B, C)]
        steps["mamba-ssm"] = step(
            lambda: selective_scan_fn(layout[0], layout[1], A, layout[2], layout[3], D)
        )
    return steps


def gpu_model_steps(seq: int) -> dict:
    """One training step (fwd + bwd + AdamW) of the model on CUDA with each GPU scan, and
    with hook_ssm_state hooked ("+state"), synchronised: {name: step}."""
    import torch

    import models.mamba as ours
    from models.mamba.backends import BACKENDS

    tokens = torch.randint(0, VOCAB, (64, seq), generator=torch.Generator().manual_seed(0))
    tokens = tokens.cuda()
    scans = ["triton", "compiled", "fast"]
    if BACKENDS["cuda"].kernel("selective_scan_fn") is not None:
        scans.insert(0, "cuda")
    steps = {}
    for scan in scans:
        for state in ("", "+state"):
            if scan == "cuda" and state:
                continue  # mamba-ssm's kernel does not return the trajectory
            model = ours.MambaLM(mamba_config(ours, scan)).cuda()
            if state:
                for block in model.blocks:
                    block.mixer.hook_ssm_state.add_hook(lambda act, hook: act)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

            def run(model=model, optimizer=optimizer):
                logits = model(tokens)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                torch.cuda.synchronize()

            steps[scan + state] = run
    return steps


def gpu_section(rounds: int) -> None:
    """The GPU scans against each other and mamba-ssm (CUDA only)."""
    import torch

    if not torch.cuda.is_available():
        print("\nGPU scans (triton, mamba-ssm, compiled): skipped, torch sees no CUDA device")
        return
    print(f"\nGPU scans on {torch.cuda.get_device_name()}, {rounds} interleaved rounds")
    for seq in (128, 512):
        timings = interleaved(gpu_scan_steps(seq), rounds=rounds, warmup=2)
        baseline = "mamba-ssm" if "mamba-ssm" in timings else "triton"
        title = f"selective scan fwd + bwd, batch 64 x {seq}, d_inner 128, d_state 16"
        print_table(timings, baseline=baseline, work=64 * seq, unit="tok", title=title)
    for seq in (128, 512):
        timings = interleaved(gpu_model_steps(seq), rounds=rounds, warmup=2)
        baseline = "cuda" if "cuda" in timings else "triton"
        title = f"training step on the GPU, batch 64 x {seq} ('cuda' is mamba-ssm's kernel)"
        print_table(timings, baseline=baseline, work=64 * seq, unit="tok", title=title)
        for scan in ("triton", "compiled", "fast"):
            slowdown = 1 / ratio(timings, scan + "+state", scan)
            print(f"    {scan + '+state':<16} {slowdown:5.2f}x the time of {scan} (target <= 1.5)")


def report(timings: dict[str, Timing], tokens: int) -> None:
    print_table(timings, baseline="today-fast", work=tokens, unit="tok")
    print("  targets (median per-round speed-up; worst round's throughput vs the median):")
    for name in [n for n in timings if n in OURS]:
        today = "today-fast+state" if name.endswith("+state") else "today-fast"
        print(f"    {name:<16} {ratio(timings, name, today):6.2f}x vs {today}")
    for name, t in timings.items():
        print(f"    {name:<16} worst round at {t.median / max(t.seconds):5.0%} of median tok/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds; no HF, memory, scaling")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--baseline", default="07226f4", help="git commit of 'today'")
    parser.add_argument("--gpu", action="store_true", help="only the GPU section (CUDA)")
    parser.add_argument("--sub", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sub:
        kind, *rest = json.loads(args.sub)
        print(json.dumps(SUBCOMMANDS[kind](*rest)))
        return
    rounds = 3 if args.quick else args.rounds
    if args.gpu:
        gpu_section(rounds)
        return
    names = TODAY + OURS + [n for n in ANCHORS if not (args.quick and n == "hf-slow")]
    tokens = 64 * 128
    print(
        f"one training step (fwd + bwd + AdamW), batch 64 x seq 128, {args.threads} torch "
        f"threads, {rounds} interleaved rounds after 2 warm-up rounds; today = {args.baseline}"
    )
    for keep_freed in (False, True):
        allocator = "keep_freed_memory()" if keep_freed else "glibc default allocator"
        rows = _sub("time", names, args.baseline, 64, 128, rounds, 2, args.threads, keep_freed)
        print(f"\n-- {allocator}")
        report({name: Timing(name, seconds) for name, seconds in rows.items()}, tokens)

    print("\nbuild time of the 'native' scan (first training step minus a later one)")
    with tempfile.TemporaryDirectory() as cache:
        for cache_state in ("fresh", "warm"):
            t = _sub("compile", "native", args.baseline, args.threads,
                     env={"TORCH_EXTENSIONS_DIR": cache})  # fmt: skip
            print(
                f"  native           {cache_state} extension directory: "
                f"{t['first'] - t['steady']:6.1f} s (first step {t['first']:.1f} s)"
            )

    print("\ncompile time of the 'compiled' scan (first training step minus a later one)")
    with tempfile.TemporaryDirectory() as cache:
        for cache_state in ("fresh", "warm"):
            for name in ("compiled", "compiled+state"):
                env = {"TORCHINDUCTOR_CACHE_DIR": cache}
                t = _sub("compile", name, args.baseline, args.threads, env=env)
                print(
                    f"  {name:<16} {cache_state} Inductor cache: "
                    f"{t['first'] - t['steady']:6.1f} s (first step {t['first']:.1f} s)"
                )

    print("\nreference scan (autograd step loop), batch 64 x seq 128: today vs now")
    rows = _sub(
        "time", ["today-reference", "reference"], args.baseline, 64, 128,
        1 if args.quick else 3, 1, args.threads, False,
    )  # fmt: skip
    timings = {name: Timing(name, seconds) for name, seconds in rows.items()}
    print_table(timings, baseline="today-reference", work=tokens, unit="tok")
    gpu_section(rounds)
    if args.quick:
        return

    print("\npeak RSS of 3 training steps, each model alone in a subprocess")
    for name in TODAY + OURS + ANCHORS:
        m = _sub("memory", name, args.baseline, 64, 128, args.threads)
        print(f"  {name:<16} {m['peak_mb']:7.0f} MB (+{m['delta_mb']:.0f} MB over the built model)")

    print("\nfast paths at batch 16 against sequence length (today-fast is the baseline)")
    for seq in (128, 256, 512, 1024):
        contenders = ["today-fast", "fast", "native", "compiled"]
        rows = _sub("time", contenders, args.baseline, 16, seq, 3, 2, args.threads, False)
        timings = {name: Timing(name, seconds) for name, seconds in rows.items()}
        print_table(timings, baseline="today-fast", work=16 * seq, unit="tok", title=f"seq {seq}")


if __name__ == "__main__":
    main()
