"""One training loop for every model and task.

    python -m models.train --preset small --model transformer --seed 0 [--resume]
        [--task NAME] [--set train.steps=100 --set tasks.graph_nav.width=7 ...]

Writes ``runs/<experiment>/<task>/<model>/seed<k>/``: ``config.json`` (the resolved run
config), ``checkpoint.safetensors`` (weights, AdamW state, step, RNG), ``metrics.jsonl``
(one JSON object per log or eval line) and ``summary.json`` at the end.

Batches are a pure function of (seed, step), so a resumed run sees exactly the data an
uninterrupted one would: on CPU the final weights are bitwise identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from models.budget import fit_to_budget
from models.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from models.config import Preset, TrainConfig, load_preset
from models.registry import build_model, count_parameters, model_config
from tasks import Task, build_task

TRAIN_STREAM, EVAL_STREAM, PROBE_STREAM = 0, 1, 2


def generator(seed: int, stream: int, index: int) -> torch.Generator:
    """The random stream for batch ``index`` of ``stream`` (train / eval / probe) of a seed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * 1_000_033 + index)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_run(preset: Preset, model: str, seed: int) -> dict:
    """The complete config of one run: task and model fields filled in, budget applied."""
    task = build_task(preset.task, preset.tasks.get(preset.task))
    fields = dict(preset.model.get(model, {}))
    fields.update(d_vocab=task.d_vocab_in, d_input=task.d_input, d_vocab_out=task.d_vocab_out)
    fields["seed"] = seed
    config = model_config(model, fields)
    if hasattr(config, "n_ctx"):
        config = dataclasses.replace(config, n_ctx=task.seq_len)
    if preset.param_budget:
        config = fit_to_budget(model, config, preset.param_budget)
    run = {
        "experiment": preset.experiment,
        "task": preset.task,
        "task_config": dataclasses.asdict(task.config),
        "model": model,
        "model_config": dataclasses.asdict(config),
        "param_budget": preset.param_budget,
        "seed": seed,
        "train": dataclasses.asdict(preset.train_for(model)),
    }
    return json.loads(json.dumps(run))  # exactly what config.json will hold


def build_run(run: dict) -> tuple[Task, torch.nn.Module]:
    """Task and freshly initialised model of a resolved run config."""
    return build_task(run["task"], run["task_config"]), build_model(
        run["model"], run["model_config"]
    )


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
def evaluate(model, task: Task, seed: int, config: TrainConfig, device) -> dict[str, float | None]:
    """Loss and task metrics pooled over fixed held-out batches, for the task and each of
    its :meth:`~tasks.Task.evaluation_tasks` (keys prefixed, e.g. ``long_accuracy``)."""
    model.eval()
    sums: dict[str, list[float]] = {}
    for prefix, evaluation in task.evaluation_tasks().items():
        for index in range(config.eval_batches):
            batch = evaluation.sample(config.batch_size, generator(seed, EVAL_STREAM, index))
            batch = batch.to(device)
            logits = model(batch.inputs)
            results = {"loss": (evaluation.loss(logits, batch).item(), 1)}
            results.update(evaluation.metrics(logits, batch))
            for name, (total, count) in results.items():
                acc = sums.setdefault(prefix + name, [0.0, 0])
                acc[0] += total
                acc[1] += count
    model.train()
    # None (JSON null) where no position of that kind occurred
    return {name: total / count if count else None for name, (total, count) in sums.items()}


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
    model.to(device)
    optimizer = make_optimizer(model, config)
    identity = {"model": run["model"], "task": run["task"], "seed": run["seed"]}

    start = 0
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or delete it")
        saved = json.loads((out_dir / "config.json").read_text())
        if saved != run:
            changed = sorted(k for k in run if saved.get(k) != run[k])
            raise ValueError(
                f"{out_dir}/config.json differs from this run in {changed}; "
                "use another experiment name or delete the run"
            )
        start = load_checkpoint(ckpt_path, model, optimizer, expect_meta=identity)
        if start == config.steps and (out_dir / "summary.json").exists():
            return json.loads((out_dir / "summary.json").read_text())  # already finished
        _truncate_metrics(metrics_path, start)
    else:
        atomic_write(out_dir / "config.json", lambda p: p.write_text(json.dumps(run, indent=2)))
        metrics_path.unlink(missing_ok=True)

    n_params = count_parameters(model)
    log = metrics_path.open("a")
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc=f"{run['model']}/{run['task']}/seed{run['seed']}",
        disable=not progress,
    )
    running, began, tokens = [], time.perf_counter(), 0
    for step in bar:
        batch = task.sample(config.batch_size, generator(run["seed"], TRAIN_STREAM, step)).to(
            device
        )
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
    summary = {
        **identity,
        "n_params": n_params,
        "steps": config.steps,
        "train_seconds": elapsed,
        "tokens_per_second": tokens / elapsed if elapsed else None,
        "final": evaluate(model, task, run["seed"], config, device),
        "device": str(device),
    }
    atomic_write(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    return summary


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in kept)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="configs/<preset>.toml or a path")
    parser.add_argument("--model", action="append", help="model(s) to train (default: preset's)")
    parser.add_argument("--task", help="task to train on (default: preset's)")
    parser.add_argument("--seed", type=int, action="append", help="seed(s) (default: preset's)")
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field, e.g. train.steps=100",
    )
    parser.add_argument("--resume", action="store_true", help="continue existing runs")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)  # decaying SSM states reach denormals, slow on CPU
    overrides = list(args.set) + ([f"task={args.task}"] if args.task else [])
    preset = load_preset(args.preset, overrides)
    for model in args.model or preset.models:
        for seed in args.seed or preset.seeds:
            run = resolve_run(preset, model, seed)
            summary = train(run, preset.run_dir(model, seed), resume=args.resume)
            final = ", ".join(f"{k}={v:.3f}" for k, v in summary["final"].items() if v is not None)
            print(
                f"{model} seed{seed}: {summary['n_params']} params, "
                f"{summary['train_seconds']:.0f}s, {final}"
            )


if __name__ == "__main__":
    main()
