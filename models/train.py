"""One training loop for every model and task.

``train(run, out_dir)`` trains the resolved run config ``run`` (see :mod:`models.run`) into
``out_dir``, holding the directory's lock (:mod:`lab.lock`): ``config.json`` (the run
config), ``checkpoint.safetensors`` (weights, AdamW state, step, running sums; see
:mod:`models.checkpoint`), ``timing.json`` (training seconds at each checkpoint),
``metrics.jsonl`` (one JSON object per log or eval line) and ``summary.json`` at the end
(final held-out metrics and curves, and the reference predictors' metrics on the same
batches; recorded in :mod:`lab.provenance`). The command line
is ``python -m studies train`` (see :mod:`studies.cli`).

Batches are a pure function of (seed, step), and nothing else random is drawn, so a
resumed run sees exactly the data an uninterrupted one would: on CPU the final weights,
the checkpoint file, the logged losses and the totals are identical.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lab import provenance
from lab.config import from_dict, require
from lab.io import LineLog, atomic_write, read_json, read_json_lines, write_json
from lab.lock import run_lock
from lab.provenance import differences, fingerprint
from lab.streams import EVAL, REFERENCE, generator, resolve_device
from models.checkpoint import load_checkpoint, save_checkpoint
from models.prefetch import training_batches
from models.registry import count_parameters, to_device
from models.run import build_run
from tasks import Curve, Task
from tasks.reference import fit_references


@dataclass
class TrainConfig:
    """The training budget; every model of a study gets the same one. ``batch_seeds`` and
    ``loader_workers`` say how to run, not what to learn: they are left out of the run
    config (``models.run.EXECUTION``)."""

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
    batch_seeds: bool = True
    """Train the seeds of a study's condition and arm together as one batched model
    (:mod:`models.train_seeds`): the same data, and the same results to float rounding."""
    loader_workers: int = 0
    """Processes drawing training batches ahead of the loop (:mod:`models.prefetch`): the
    same batches, off the loop's critical path where a core is free."""

    def __post_init__(self):
        require(
            self.loader_workers >= 0,
            f"train.loader_workers must be a whole number >= 0, got {self.loader_workers}",
        )
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


CONFIG, CHECKPOINT, METRICS, TIMING, SUMMARY = (
    "config.json",
    "checkpoint.safetensors",
    "metrics.jsonl",
    "timing.json",
    "summary.json",
)
"""The files of a run directory that training writes."""


@dataclass
class Totals:
    """Running sums of the training loop, carried in the checkpoint so that a resumed run
    reports what an uninterrupted one does."""

    loss_sum: float = 0.0
    """Sum of the training losses since the last log line."""
    loss_count: int = 0
    tokens: int = 0
    """Tokens trained on so far."""

    def add(self, loss: float, inputs: torch.Tensor) -> None:
        """Count one training step: its loss and the tokens of its inputs [batch, pos, ...]."""
        self.loss_sum += loss
        self.loss_count += 1
        self.tokens += inputs.shape[0] * inputs.shape[1]


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
    return adamw(groups, config)


def adamw(groups: list[dict], config: TrainConfig) -> torch.optim.AdamW:
    """The lab's AdamW over parameter ``groups`` (each with its weight decay)."""
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


@torch.no_grad()
def evaluate(
    model, task: Task, seed: int, config: TrainConfig, device, with_curves: bool = False
) -> dict[str, float | None] | tuple[dict[str, float | None], dict[str, Curve], dict[str, dict]]:
    """Loss and task metrics pooled over fixed held-out batches, for the task and each of
    its :meth:`~tasks.Task.evaluation_tasks` (keys prefixed, e.g. ``long_accuracy``).

    With ``with_curves`` (the final evaluation) also the task's :meth:`~tasks.Task.curves`,
    pooled over every batch of every evaluation task (their x axes say which variant a
    point comes from), and the loss and metrics of each of the task's reference predictors
    (:mod:`tasks.reference`, fit on the run's ``REFERENCE`` stream) on the same batches,
    pooled the same way: ``(metrics, curves, {reference: metrics})``."""
    model.eval()
    references = (
        fit_references(task, lambda index: generator(seed, REFERENCE, index)) if with_curves else {}
    )
    sums: dict[str, list[float]] = {}
    reference_sums: dict[str, dict[str, list[float]]] = {name: {} for name in references}
    curves: dict[str, Curve] = {}

    def pool(into: dict[str, list[float]], prefix: str, evaluation: Task, logits, batch) -> None:
        results = {"loss": (evaluation.loss(logits, batch).item(), 1)}
        results.update(evaluation.metrics(logits, batch))
        for name, (total, count) in results.items():
            acc = into.setdefault(prefix + name, [0.0, 0])
            acc[0] += total
            acc[1] += count

    for prefix, evaluation in task.evaluation_tasks().items():
        for index in range(config.eval_batches):
            batch = evaluation.sample(config.batch_size, generator(seed, EVAL, index))
            batch = batch.to(device)
            logits = model(batch.inputs)
            pool(sums, prefix, evaluation, logits, batch)
            for name, reference in references.items():
                pool(reference_sums[name], prefix, evaluation, reference(batch), batch)
            if with_curves:
                for name, curve in evaluation.curves(logits, batch).items():
                    curves[name] = curves[name] + curve if name in curves else curve
    model.train()

    def means(pooled: dict[str, list[float]]) -> dict[str, float | None]:
        # None (JSON null) where no position of that kind occurred
        return {name: total / count if count else None for name, (total, count) in pooled.items()}

    if not with_curves:
        return means(sums)
    return means(sums), curves, {name: means(pooled) for name, pooled in reference_sums.items()}


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
    loader_workers: int = 0,
) -> dict:
    """Train one run into ``out_dir``, holding its lock (:mod:`lab.lock`); return its summary.

    resume:  continue from ``out_dir/checkpoint.safetensors`` if there is one (a finished
             run returns its summary). Without it an existing checkpoint is an error
             (nothing is overwritten).
    stop_at: stop after this step, as if killed (only checkpoints already due are written).
    loader_workers: processes that draw the training batches ahead of the loop (0: the
             loop draws them; the same batches either way, see :mod:`models.prefetch`).

    The run config is checked (every training field; the task and model are built) before
    anything is written. A fresh start clears the directory's derived artefacts (see
    :mod:`lab.provenance`); one that fails before its first checkpoint removes what it wrote.
    """
    out_dir = Path(out_dir)
    config = from_dict(TrainConfig, run["train"], f"{out_dir / CONFIG} [train]")
    device = resolve_device(config.device)
    task, model = build_run(run)
    model = to_device(model, device)
    with run_lock(out_dir, create=True):
        fresh = not (out_dir / CHECKPOINT).exists()
        try:
            return _train(
                run, config, task, model, device, out_dir, resume, stop_at, progress,
                loader_workers,
            )  # fmt: skip
        except BaseException:
            if fresh and not (out_dir / CHECKPOINT).exists():
                for name in (CONFIG, METRICS, TIMING):
                    (out_dir / name).unlink(missing_ok=True)
            raise


def _train(
    run, config, task, model, device, out_dir, resume, stop_at, progress, loader_workers
) -> dict:
    optimizer = make_optimizer(model, config)
    start, totals, seconds = begin_run(run, out_dir, model, optimizer, resume)
    if start == config.steps and (summary := current_summary(out_dir, run)) is not None:
        return summary
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc=f"{run['study']}/{run['condition']}/{run['model']}/seed{run['seed']}",
        disable=not progress,
    )
    steps = range(start, config.steps)
    drawn = training_batches(task, [run["seed"]], config.batch_size, steps, loader_workers)
    began = time.perf_counter()
    with LineLog(out_dir / METRICS) as log, closing(drawn):
        for step, batches in zip(bar, drawn, strict=True):
            batch = batches[run["seed"]].to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            loss = task.loss(model(batch.inputs), batch)
            if not torch.isfinite(loss):
                raise non_finite_loss(run, config, loss.item(), step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            totals.add(loss.item(), batch.inputs)
            done = step + 1
            record = log_record(
                done, config, totals, lambda: evaluate(model, task, run["seed"], config, device)
            )
            if record is not None:
                bar.set_postfix(loss=f"{record['train_loss']:.3f}")
                log.write(json.dumps(record))
            if done % config.checkpoint_every == 0 or done == config.steps:
                elapsed = seconds + time.perf_counter() - began
                save_run(out_dir, done, elapsed, model, optimizer, run, totals)
            if stop_at is not None and done >= stop_at:
                return {}
    return finish_run(run, config, task, model, device, out_dir, totals)


def non_finite_loss(run: dict, config: TrainConfig, loss: float, step: int) -> FloatingPointError:
    """The error of a run whose training loss is not finite."""
    return FloatingPointError(
        f"{run['model']} on {run['task']}: loss is {loss} at step {step}; "
        f"lower train.lr (now {config.lr}) or check the inputs"
    )


def log_record(done: int, config: TrainConfig, totals: Totals, evaluation) -> dict | None:
    """The log line due after ``done`` steps (None if none is): the mean training loss
    since the last line (whose sums it resets), the learning rate, and where an evaluation
    is due the ``eval_*`` metrics of ``evaluation()``."""
    if done % config.log_every and done != config.steps:
        return None
    record = {
        "step": done,
        "train_loss": totals.loss_sum / totals.loss_count,
        "lr": learning_rate(done - 1, config),
    }
    totals.loss_sum, totals.loss_count = 0.0, 0
    if done % config.eval_every == 0 or done == config.steps:
        record.update({f"eval_{k}": v for k, v in evaluation().items()})
    return record


def save_run(out_dir: Path, step: int, seconds: float, model, optimizer, run, totals) -> None:
    """Checkpoint ``step`` of a run: its training time in ``timing.json``, then the
    checkpoint (weights, optimizer state, totals)."""
    record_seconds(out_dir, step, seconds)
    save_checkpoint(out_dir / CHECKPOINT, model, optimizer, step, run, asdict(totals))


def finish_run(run, config, task, model, device, out_dir: Path, totals, **extra) -> dict:
    """Evaluate the trained model (with curves), write and record ``summary.json`` (with
    ``extra`` fields) and return it."""
    seconds = seconds_at(out_dir, config.steps)  # the time of the final checkpoint
    final, curves, references = evaluate(
        model, task, run["seed"], config, device, with_curves=True
    )
    summary = {
        **{k: run[k] for k in ("study", "condition", "model", "task", "seed")},
        "n_params": count_parameters(model),
        "steps": config.steps,
        "train_seconds": seconds,
        "tokens_per_second": totals.tokens / seconds if seconds else None,
        "final": final,
        "references": references,
        "chance_accuracy": task.chance_accuracy,
        "curves": curve_rows(curves),
        "device": str(device),
        **extra,
    }
    with provenance.rewriting(out_dir, [SUMMARY], _summary_origin(run)):
        write_json(out_dir / SUMMARY, summary)
    return summary


def begin_run(run, out_dir: Path, model, optimizer, resume: bool) -> tuple[int, Totals, float]:
    """(step, totals, seconds) training starts from: the checkpoint's, or zero on a fresh
    start, which first clears the directory's artefacts and writes ``config.json``."""
    ckpt = out_dir / CHECKPOINT
    if not ckpt.exists():
        provenance.clear(out_dir)
        for name in (METRICS, TIMING, SUMMARY):
            (out_dir / name).unlink(missing_ok=True)
        write_json(out_dir / CONFIG, run)
        return 0, Totals(), 0.0
    if not resume:
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue it, or delete it")
    saved = read_json(out_dir / CONFIG, "run config")
    if saved != run:
        raise ValueError(
            f"{out_dir / CONFIG} differs from this run in {differences(saved, run)}; "
            "use another experiment name or delete the run"
        )
    info = load_checkpoint(ckpt, model, optimizer, expect_run=run)
    _truncate_metrics(out_dir / METRICS, info.step)
    return info.step, Totals(**info.totals), seconds_at(out_dir, info.step)


def _summary_origin(run: dict) -> dict:
    return provenance.origin("train", fingerprint(run), run["train"]["steps"])


def current_summary(out_dir: Path, run: dict) -> dict | None:
    """The run's summary if it was written from its final checkpoint, else None."""
    made_from = _summary_origin(run)
    if provenance.problem(out_dir, SUMMARY, **made_from) or not (out_dir / SUMMARY).is_file():
        return None
    return read_json(out_dir / SUMMARY, "run summary")


def record_seconds(out_dir: Path, step: int, seconds: float) -> None:
    """Add the training time at checkpoint ``step`` to ``timing.json`` (kept beside the
    checkpoint, not in it, so that same-seed checkpoints stay byte-identical)."""
    path = out_dir / TIMING
    timing = read_json(path, "training times") if path.is_file() else {}
    write_json(path, {**timing, str(step): seconds})


def seconds_at(out_dir: Path, step: int) -> float:
    """Training time at checkpoint ``step`` (0 with a warning if it was not recorded)."""
    path = out_dir / TIMING
    timing = read_json(path, "training times") if path.is_file() else {}
    if str(step) not in timing:
        warnings.warn(
            f"{path}: no time recorded for step {step}; train_seconds will miss it", stacklevel=3
        )
    return timing.get(str(step), 0.0)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (they will be written again), and a line torn
    by a kill or a full disk."""
    if not path.exists():
        return
    kept = [json.dumps(r) + "\n" for r in read_json_lines(path) if r["step"] <= step]
    atomic_write(path, lambda p: p.write_text("".join(kept)))
