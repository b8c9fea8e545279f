"""Seed-batched training: runs that differ only in their seed (the seeds of one study,
condition and arm), trained together as one :class:`models.ensemble.Ensemble`.

Each run is trained as :func:`models.train.train` trains it alone, and its directory ends
up the same: every step each seed draws its own batch from its own stream
(``generator(seed, TRAIN, step)``), its gradients are clipped by its own norm and AdamW
steps it with its own state; it has its own log lines, evaluations, ``timing.json``,
``checkpoint.safetensors`` (loadable by :func:`models.checkpoint.load_checkpoint` and
resumable alone or batched) and ``summary.json``. The numbers agree with training alone
to float rounding, not bit for bit (batched matrix products sum in another order).
``summary.json`` adds ``batch_seeds``, the seeds trained together, and ``train_seconds``
is the wall time of the batch (each seed took that long, side by side with the others).

A seed whose loss is not finite stops as it would alone (its directory keeps its last
checkpoint) and leaves the ensemble; the others go on. Where an architecture does not
vmap on a device (an operation with no batching rule; see :mod:`models.vmap`), its seeds
train one by one, with a warning naming the reason.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lab.config import from_dict
from lab.io import LineLog
from lab.lock import run_lock
from lab.provenance import canonical
from lab.streams import EVAL, generator, resolve_device
from models.ensemble import Ensemble
from models.prefetch import training_batches
from models.registry import to_device
from models.run import build_run
from models.train import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    TIMING,
    TrainConfig,
    adamw,
    begin_run,
    current_summary,
    evaluate,
    finish_run,
    learning_rate,
    log_record,
    make_optimizer,
    non_finite_loss,
    save_run,
    train,
)

Result = dict | FloatingPointError
"""A run's summary ({} when stopped early by ``stop_at``), or the error that stopped it."""


def seedless(run: dict) -> str:
    """What runs trained together must share: the run config without its seed."""
    return canonical(
        {
            **{k: v for k, v in run.items() if k != "seed"},
            "model_config": {k: v for k, v in run["model_config"].items() if k != "seed"},
        }
    )


def train_seeds(
    runs: list[dict],
    out_dirs: list[Path],
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    loader_workers: int = 0,
) -> list[Result]:
    """Train ``runs`` (equal but for their seeds) into ``out_dirs`` as one ensemble,
    holding every directory's lock; return each run's result, in order.

    ``resume``, ``stop_at`` and ``loader_workers`` act as in :func:`models.train.train`;
    runs resumed from different steps train in one ensemble per step they start from.
    """
    out_dirs = [Path(d) for d in out_dirs]
    if len(runs) != len(out_dirs) or not runs:
        raise ValueError(f"give one directory per run: {len(runs)} runs, {len(out_dirs)} dirs")
    if len({seedless(r) for r in runs}) > 1:
        raise ValueError("seed-batched runs must differ only in their seed")
    if len({r["seed"] for r in runs}) < len(runs) or len(set(out_dirs)) < len(out_dirs):
        raise ValueError("seed-batched runs need distinct seeds and run directories")
    config = from_dict(TrainConfig, runs[0]["train"], f"{out_dirs[0] / CONFIG} [train]")
    device = resolve_device(config.device)
    built = [build_run(run) for run in runs]
    task, models = built[0][0], [to_device(model, device) for _, model in built]
    reason = why_not_batched(task, models, device)
    if reason is not None:
        warnings.warn(
            f"{runs[0]['architecture']} on {device} cannot train its seeds as one batch "
            f"({reason}); training them one by one",
            stacklevel=2,
        )
        pairs = zip(runs, out_dirs, strict=True)
        return [_alone(run, d, resume, stop_at, progress, loader_workers) for run, d in pairs]
    with ExitStack() as locks:
        for out_dir in sorted(out_dirs):
            locks.enter_context(run_lock(out_dir, create=True))
        fresh = [not (d / CHECKPOINT).exists() for d in out_dirs]
        try:
            return _train(
                runs, out_dirs, fresh, config, task, models, device, resume, stop_at, progress,
                loader_workers,
            )  # fmt: skip
        except BaseException:
            for out_dir, new in zip(out_dirs, fresh, strict=True):
                _forget(out_dir, new)
            raise


def why_not_batched(task, models: list, device: torch.device) -> str | None:
    """Why ``models`` cannot train as one vmapped ensemble on ``device`` (None: they can),
    found by a training step (forward and backward) of two of them on a small batch. One
    model first takes that step alone (on a copy), so that kernels which check themselves on
    first use (Mamba's scan backends, :mod:`models.mamba.dispatch`, whose trial cannot run
    inside vmap) have done so before the ensemble runs."""
    probe = task.sample(2, generator(0, EVAL, 0)).to(device)
    task.loss(copy.deepcopy(models[0])(probe.inputs), probe).backward()
    ensemble = Ensemble(models[:2])
    try:
        logits = ensemble(torch.stack([probe.inputs] * len(ensemble)))
        sum(task.loss(member, probe) for member in logits).backward()
    except RuntimeError as error:  # an operation with no batching rule
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def _alone(run, out_dir, resume, stop_at, progress, loader_workers) -> Result:
    try:
        return train(run, out_dir, resume, stop_at, progress, loader_workers)
    except FloatingPointError as error:
        return error


def _forget(out_dir: Path, fresh: bool) -> None:
    """What :func:`models.train.train` does when a fresh run fails before its first
    checkpoint: remove the files it wrote."""
    if fresh and not (out_dir / CHECKPOINT).exists():
        for name in (CONFIG, METRICS, TIMING):
            (out_dir / name).unlink(missing_ok=True)


def _train(
    runs, out_dirs, fresh, config, task, models, device, resume, stop_at, progress, loader_workers
):
    optimizers = [make_optimizer(model, config) for model in models]
    begun = [
        begin_run(run, d, model, opt, resume)
        for run, d, model, opt in zip(runs, out_dirs, models, optimizers, strict=True)
    ]
    results: list[Result | None] = [None] * len(runs)
    for i, (start, _, _) in enumerate(begun):
        if start == config.steps:
            results[i] = current_summary(out_dirs[i], runs[i])
    starts = sorted({begun[i][0] for i, r in enumerate(results) if r is None})
    for start in starts:
        members = [i for i, r in enumerate(results) if r is None and begun[i][0] == start]
        trainer = _Batch(runs, out_dirs, fresh, config, task, models, optimizers, begun, device)
        results = trainer.run(members, start, results, stop_at, progress, loader_workers)
    return results


class _Batch:
    """One ensemble of members that start from the same step (indices into the runs)."""

    def __init__(self, runs, out_dirs, fresh, config, task, models, optimizers, begun, device):
        self.runs, self.out_dirs, self.fresh = runs, out_dirs, fresh
        self.config, self.task = config, task
        self.models, self.optimizers, self.device = models, optimizers, device
        self.totals = [totals for _, totals, _ in begun]
        self.seconds = [seconds for _, _, seconds in begun]

    def run(self, members, start, results, stop_at, progress, loader_workers):
        config, runs = self.config, self.runs
        self.active = list(members)
        self.ensemble = Ensemble([self.models[i] for i in members])
        self._optimize([self.optimizers[i].state_dict() for i in members])
        r = runs[members[0]]
        bar = tqdm(
            range(start, config.steps),
            initial=start,
            total=config.steps,
            desc=f"{r['study']}/{r['condition']}/{r['model']}/seeds"
            + ",".join(str(runs[i]["seed"]) for i in members),
            disable=not progress,
        )
        logs = {i: LineLog(self.out_dirs[i] / METRICS) for i in members}
        seeds = [runs[i]["seed"] for i in members]
        steps = range(start, config.steps)
        drawn = training_batches(self.task, seeds, config.batch_size, steps, loader_workers)
        began = time.perf_counter()
        try:
            for step, step_batches in zip(bar, drawn, strict=True):
                batches, losses, values = self._losses(step, step_batches, results, logs)
                if not self.active:
                    return results
                self.optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                self.ensemble.clip_grad_norms_(config.grad_clip)
                self.optimizer.step()
                done = step + 1
                self._log(done, values, batches, logs, bar)
                if done % config.checkpoint_every == 0 or done == config.steps:
                    self._save(done, time.perf_counter() - began)
                if stop_at is not None and done >= stop_at:
                    for i in self.active:
                        results[i] = {}
                    return results
        finally:
            drawn.close()
            bar.close()
            for log in logs.values():
                log.__exit__(None, None, None)
        together = [runs[i]["seed"] for i in self.active]
        for j, i in enumerate(self.active):
            model = self.ensemble.member(j)
            results[i] = finish_run(
                runs[i], config, self.task, model, self.device, self.out_dirs[i],
                self.totals[i], batch_seeds=together,
            )  # fmt: skip
        return results

    def _losses(self, step, step_batches, results, logs):
        """Each active member's batch of ``step`` (from ``step_batches``, by seed), loss
        [member] and its values; members whose loss is not finite are stopped (their error
        in ``results``) and the step is taken again without them."""
        config = self.config
        lr = learning_rate(step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = [step_batches[self.runs[i]["seed"]] for i in self.active]
        while self.active:
            batches = [b.to(self.device) for b in batches]
            logits = self.ensemble(torch.stack([b.inputs for b in batches]))
            losses = torch.stack([self.task.loss(logits[j], b) for j, b in enumerate(batches)])
            values = losses.tolist()
            bad = [j for j, v in enumerate(values) if not math.isfinite(v)]
            if not bad:
                return batches, losses, values
            for j in bad:
                i = self.active[j]
                results[i] = non_finite_loss(self.runs[i], config, values[j], step)
                logs.pop(i).__exit__(None, None, None)
                _forget(self.out_dirs[i], self.fresh[i])
            keep = [j for j in range(len(self.active)) if j not in bad]
            self._keep(keep)
            batches = [batches[j] for j in keep]
        return [], None, []

    def _keep(self, keep: list[int]) -> None:
        """Go on with members ``keep`` (positions in the ensemble) only."""
        states = [self.ensemble.member_optimizer_state(self.optimizer, j) for j in keep]
        self.active = [self.active[j] for j in keep]
        if not self.active:
            return
        self.ensemble.keep(keep)
        self._optimize(states)

    def _optimize(self, states: list[dict]) -> None:
        """A stacked AdamW over the ensemble, with its members' optimizer ``states``."""
        groups = self.ensemble.parameter_groups(self.config.weight_decay)
        self.optimizer = adamw(groups, self.config)
        self.ensemble.load_optimizer_states(self.optimizer, states)

    def _log(self, done, values, batches, logs, bar) -> None:
        for j, i in enumerate(self.active):
            self.totals[i].add(values[j], batches[j].inputs)
            record = log_record(
                done,
                self.config,
                self.totals[i],
                lambda j=j, i=i: evaluate(
                    self.ensemble.member(j), self.task, self.runs[i]["seed"], self.config,
                    self.device,
                ),
            )  # fmt: skip
            if record is not None:
                logs[i].write(json.dumps(record))
                if j == 0:
                    bar.set_postfix(loss=f"{record['train_loss']:.3f}")

    def _save(self, done: int, elapsed: float) -> None:
        for j, i in enumerate(self.active):
            model = self.ensemble.member(j)
            self.optimizers[i].load_state_dict(
                self.ensemble.member_optimizer_state(self.optimizer, j)
            )
            save_run(
                self.out_dirs[i], done, self.seconds[i] + elapsed, model, self.optimizers[i],
                self.runs[i], self.totals[i],
            )  # fmt: skip
