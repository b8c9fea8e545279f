"""One training loop for every model and task.

``train(run, out_dir)`` trains the resolved run config ``run`` (see :mod:`models.run`) into
``out_dir``: ``config.json`` (the run config), ``checkpoint.safetensors`` (weights, AdamW
state, step, RNG), ``metrics.jsonl`` (one JSON object per log or eval line) and
``summary.json`` at the end (final held-out metrics and curves). The command line is
``python -m studies train`` (see :mod:`studies.cli`).

Batches are a pure function of (seed, step), so a resumed run sees exactly the data an
uninterrupted one would: on CPU the final weights are bitwise identical.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lab.config import require
from lab.io import atomic_write, read_json, write_json
from lab.streams import EVAL, TRAIN, generator, resolve_device
from models.checkpoint import load_checkpoint, save_checkpoint
from models.registry import count_parameters, to_device
from models.run import build_run
from tasks import Curve, Task


@dataclass
class TrainConfig:
    """The training budget; every model of a study gets the same one."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    lr: float = 1e-3
    """Peak learning rate (linear warm-up, then cosine decay to 10%)."""
    weight_decay: float = 0.01
    """AdamW decay, applied to parameters with two or more dimensions (not biases or norms)."""
    warmup_steps: int = 100
    grad_clip: float = 1.0
    """Max global gradient norm."""
    log_every: int = 20
    eval_every: int = 200
    eval_batches: int = 4
    """Batches of held-out environments per evaluation (the same ones every time)."""
    checkpoint_every: int = 200
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""

    def __post_init__(self):
        for name in (
            "steps",
            "batch_size",
            "log_every",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            require(value >= 1, f"train.{name} must be a whole number >= 1, got {value}")
        require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.grad_clip > 0, f"train.grad_clip must be > 0, got {self.grad_clip}")
        resolve_device(self.device)


TUNABLE = frozenset({"lr", "weight_decay", "warmup_steps", "grad_clip"})
"""TrainConfig fields a study may set per model (``[tune.<model>]``): optimiser settings
only, never the budget (steps, batch size) or the data."""


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to 10% of it at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


@torch.no_grad()
def evaluate(
    model, task: Task, seed: int, config: TrainConfig, device, with_curves: bool = False
) -> dict[str, float | None] | tuple[dict[str, float | None], dict[str, Curve]]:
    """Loss and task metrics pooled over fixed held-out batches, for the task and each of
    its :meth:`~tasks.Task.evaluation_tasks` (keys prefixed, e.g. ``long_accuracy``); with
    ``with_curves`` also the task's :meth:`~tasks.Task.curves`, pooled over every batch of
    every evaluation task (their x axes say which variant a point comes from)."""
    model.eval()
    sums: dict[str, list[float]] = {}
    curves: dict[str, Curve] = {}
    for prefix, evaluation in task.evaluation_tasks().items():
        for index in range(config.eval_batches):
            batch = evaluation.sample(config.batch_size, generator(seed, EVAL, index))
            batch = batch.to(device)
            logits = model(batch.inputs)
            results = {"loss": (evaluation.loss(logits, batch).item(), 1)}
            results.update(evaluation.metrics(logits, batch))
            for name, (total, count) in results.items():
                acc = sums.setdefault(prefix + name, [0.0, 0])
                acc[0] += total
                acc[1] += count
            if with_curves:
                for name, curve in evaluation.curves(logits, batch).items():
                    curves[name] = curves[name] + curve if name in curves else curve
    model.train()
    # None (JSON null) where no position of that kind occurred
    metrics = {name: total / count if count else None for name, (total, count) in sums.items()}
    return (metrics, curves) if with_curves else metrics


def curve_rows(curves: dict[str, Curve]) -> list[dict]:
    """Curves as tidy rows: curve, x, value (sums / counts; None where count is 0), count."""
    return [
        {
            "curve": name,
            "x": x,
            "value": total / count if count else None,
            "count": int(count),
        }
        for name, curve in curves.items()
        for x, total, count in zip(
            curve.x.tolist(), curve.sums.tolist(), curve.counts.tolist(), strict=True
        )
    ]


def train(
    run: dict,
    out_dir: Path,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> dict:
    """Train one run into ``out_dir``; return its summary.

    resume:  continue from ``out_dir/checkpoint.safetensors`` if there is one. Without it
             an existing checkpoint is an error (nothing is overwritten).
    stop_at: stop after this step, as if killed (only checkpoints already due are written).
    """
    out_dir = Path(out_dir)
    config = TrainConfig(**run["train"])
    device = resolve_device(config.device)
    ckpt_path, metrics_path = out_dir / "checkpoint.safetensors", out_dir / "metrics.jsonl"
    task, model = build_run(run)
    model = to_device(model, device)
    optimizer = make_optimizer(model, config)
    identity = {k: run[k] for k in ("study", "condition", "model", "task", "seed")}

    start = 0
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or delete it")
        saved = read_json(out_dir / "config.json", "run config")
        if saved != run:
            changed = sorted(k for k in run if saved.get(k) != run[k])
            raise ValueError(
                f"{out_dir}/config.json differs from this run in {changed}; "
                "use another experiment name or delete the run"
            )
        start = load_checkpoint(ckpt_path, model, optimizer, expect_meta=identity)
        if start == config.steps and (out_dir / "summary.json").exists():
            return read_json(out_dir / "summary.json", "run summary")  # already finished
        _truncate_metrics(metrics_path, start)
    else:
        write_json(out_dir / "config.json", run)
        metrics_path.unlink(missing_ok=True)

    n_params = count_parameters(model)
    log = metrics_path.open("a")
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc=f"{run['study']}/{run['condition']}/{run['model']}/seed{run['seed']}",
        disable=not progress,
    )
    running, began, tokens = [], time.perf_counter(), 0
    for step in bar:
        batch = task.sample(config.batch_size, generator(run["seed"], TRAIN, step)).to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = task.loss(model(batch.inputs), batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{run['model']} on {run['task']}: loss is {loss.item()} at step {step}; "
                f"lower train.lr (now {config.lr}) or check the inputs"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        running.append(loss.item())
        tokens += batch.inputs.shape[0] * batch.inputs.shape[1]
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record = {
                "step": done,
                "train_loss": sum(running) / len(running),
                "lr": learning_rate(step, config),
            }
            bar.set_postfix(loss=f"{record['train_loss']:.3f}")
            running = []
            if done % config.eval_every == 0 or done == config.steps:
                evaluation = evaluate(model, task, run["seed"], config, device)
                record.update({f"eval_{k}": v for k, v in evaluation.items()})
            log.write(json.dumps(record) + "\n")
            log.flush()
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(ckpt_path, model, optimizer, done, identity)
        if stop_at is not None and done >= stop_at:
            log.close()
            return {}
    log.close()
    elapsed = time.perf_counter() - began
    final, curves = evaluate(model, task, run["seed"], config, device, with_curves=True)
    summary = {
        **identity,
        "n_params": n_params,
        "steps": config.steps,
        "train_seconds": elapsed,
        "tokens_per_second": tokens / elapsed if elapsed else None,
        "final": final,
        "chance_accuracy": task.chance_accuracy,
        "curves": curve_rows(curves),
        "device": str(device),
    }
    write_json(out_dir / "summary.json", summary)
    return summary


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in kept)))
