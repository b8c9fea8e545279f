"""A small MLP probe (one hidden ReLU layer) from a stream of batches, for any target kind.

Fold 0 of the training environments is the validation split, folds 1.. train; training
stops early when the validation loss has not improved for ``patience`` epochs and the
epoch of best validation loss is reported, scored on the held-out test environments.
Every label task (the real labels, the control task) gets its own network of the same
size, trained side by side in the same passes with its own early stopping.

Each pass over the data trains one epoch and, on the same batches, evaluates the networks
as they were at the end of the previous epoch (a frozen copy), so early stopping costs no
extra pass. Regression and circular targets are fit by mean squared error on standardised
outputs and scored by R² (pooled over outputs, on the raw scale, as the ridge probe);
classification by cross-entropy, scored by accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from probes.linear import LabelTask, Rows, Standardizer, TaskFit, cosine_adam

SPLITS = ("train", "val", "test")


@dataclass
class MLPConfig:
    hidden: int = 128
    """Hidden units (the same for the real and the control task)."""
    lr: float = 1e-3
    """Adam's learning rate, decayed to 0 on a cosine over max_epochs."""
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 50
    patience: int | None = 5
    """Stop after this many epochs without a better validation loss; None: no early
    stopping, train max_epochs and report the last epoch."""


@dataclass
class MLPProbe:
    """outputs = relu(standardise(acts) @ w1 + b1) @ w2 + b2, de-standardised."""

    w1: torch.Tensor
    """[d, hidden]"""
    b1: torch.Tensor
    w2: torch.Tensor
    """[hidden, k]"""
    b2: torch.Tensor
    standardize: Standardizer
    out_mean: torch.Tensor
    """[k] (classification: zeros and ones: the outputs are the logits)"""
    out_scale: torch.Tensor

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        """acts [n, d] -> outputs (classification: logits) [n, k]."""
        hidden = F.relu(self.standardize(acts.float()) @ self.w1 + self.b1)
        return (hidden @ self.w2 + self.b2).double() * self.out_scale + self.out_mean


@dataclass
class SplitSums:
    """Streamed loss and score of every task on one split."""

    loss: torch.Tensor
    """[tasks] summed loss"""
    n: torch.Tensor
    """[tasks] rows"""
    hits: torch.Tensor
    """[tasks] correct predictions (classification)"""
    sse: torch.Tensor
    """[tasks, k] squared errors on the raw scale (regression)"""
    sy: torch.Tensor
    syy: torch.Tensor

    @classmethod
    def zeros(cls, tasks: int, k: int) -> SplitSums:
        f64 = torch.float64
        return cls(
            loss=torch.zeros(tasks, dtype=f64),
            n=torch.zeros(tasks),
            hits=torch.zeros(tasks),
            sse=torch.zeros(tasks, k, dtype=f64),
            sy=torch.zeros(tasks, k, dtype=f64),
            syy=torch.zeros(tasks, k, dtype=f64),
        )

    def score(self, classification: bool) -> torch.Tensor:
        """[tasks] accuracy, or R² pooled over outputs."""
        if classification:
            return self.hits / self.n.clamp(min=1)
        n = self.n.double().clamp(min=1)[:, None]
        sst = (self.syy - self.sy**2 / n).sum(1)
        return 1 - self.sse.sum(1) / sst

    def mean_loss(self) -> torch.Tensor:
        return self.loss / self.n.clamp(min=1)


@dataclass
class Networks:
    """One MLP per task, stacked: w1 [tasks, d, hidden], w2 [tasks, hidden, k]."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    params: list[torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.params = [self.w1, self.b1, self.w2, self.b2]

    @classmethod
    def init(cls, tasks: int, d: int, hidden: int, k: int, g: torch.Generator) -> Networks:
        """nn.Linear's initialisation: uniform in +-1/sqrt(fan_in)."""

        def uniform(*shape, fan_in):
            bound = 1 / math.sqrt(fan_in)
            return ((torch.rand(*shape, generator=g) * 2 - 1) * bound).requires_grad_()

        return cls(
            uniform(tasks, d, hidden, fan_in=d),
            uniform(tasks, 1, hidden, fan_in=d),
            uniform(tasks, hidden, k, fan_in=hidden),
            uniform(tasks, 1, k, fan_in=hidden),
        )

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """z [n, d] -> outputs [tasks, n, k]."""
        hidden = F.relu(torch.einsum("nd,tdh->tnh", z, self.w1) + self.b1)
        return torch.bmm(hidden, self.w2) + self.b2

    def copy(self) -> Networks:
        return Networks(*(p.detach().clone() for p in self.params))


def fit_mlp(
    rows: Rows,
    tasks: list[LabelTask],
    n_outputs: int,
    classification: bool,
    standardize: Standardizer,
    out_moments: tuple[torch.Tensor, torch.Tensor],
    steps_per_epoch: int,
    config: MLPConfig,
    seed: int,
) -> list[TaskFit]:
    """MLP probes of every task. ``out_moments``: mean and std [tasks, k] of each task's
    encoded labels, to fit standardised outputs (classification: zeros and ones);
    ``steps_per_epoch``: mini-batches in one pass over the training folds (1..)."""
    g = torch.Generator().manual_seed(seed)
    n_tasks = len(tasks)
    out_mean, out_std = out_moments
    out_scale = torch.where(out_std > 1e-12, out_std, torch.ones_like(out_std))
    nets = Networks.init(n_tasks, standardize.mean.numel(), config.hidden, n_outputs, g)
    opt, schedule = cosine_adam(
        nets.params, config.lr, config.max_epochs * steps_per_epoch, config.weight_decay
    )
    best: list[tuple[int, Networks, dict[str, SplitSums]] | None] = [None] * n_tasks
    best_loss = torch.full((n_tasks,), math.inf, dtype=torch.float64)
    snapshot: tuple[int, Networks] | None = None  # (epochs trained, frozen networks)
    epoch, stopped = 0, False
    while (training := epoch < config.max_epochs and not stopped) or snapshot is not None:
        sums = {split: SplitSums.zeros(n_tasks, n_outputs) for split in SPLITS}
        for x, labels, fold in rows():
            z = standardize(x)
            y = torch.stack([task(labels) for task in tasks], 0)  # [tasks, n(, k)]
            target = y if classification else ((y - out_mean[:, None]) / out_scale[:, None]).float()
            if snapshot is not None:
                with torch.no_grad():
                    out = snapshot[1](z)
                    accumulate(sums, out, y, target, fold, classification, out_mean, out_scale)
            if training:
                train = (fold >= 1).nonzero()[:, 0]
                for idx in train[torch.randperm(len(train), generator=g)].split(config.batch_size):
                    loss = task_losses(nets(z[idx]), target[:, idx], classification).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    schedule.step()
        if snapshot is not None:
            val_loss = sums["val"].mean_loss()
            for t in range(n_tasks):
                if config.patience is None or val_loss[t] < best_loss[t]:
                    best[t], best_loss[t] = (snapshot[0], snapshot[1], sums), val_loss[t]
            if config.patience is not None:
                stopped = all(snapshot[0] - b[0] >= config.patience for b in best)
        epoch += 1
        snapshot = (epoch, nets.copy()) if training and not stopped else None
    fits = []
    for t, (at, net, sums) in enumerate(best):
        scores = {split: float(sums[split].score(classification)[t]) for split in SPLITS}
        probe = MLPProbe(
            net.w1[t], net.b1[t, 0], net.w2[t], net.b2[t, 0], standardize, out_mean[t], out_scale[t]
        )
        n_train, n_test = int(sums["train"].n[t]), int(sums["test"].n[t])
        fits.append(
            TaskFit(
                scores["test"], scores["train"], scores["val"], None, at, n_train, n_test, probe
            )
        )
    return fits


def task_losses(out: torch.Tensor, target: torch.Tensor, classification: bool) -> torch.Tensor:
    """[tasks] summed loss of outputs [tasks, n, k] against targets [tasks, n(, k)]."""
    if classification:
        return F.cross_entropy(out.transpose(1, 2), target, reduction="none").mean(1)
    return ((out - target) ** 2).mean((1, 2))


def accumulate(sums, out, y, target, fold, classification, out_mean, out_scale) -> None:
    """Add a batch's losses and score sums, by split, to ``sums``."""
    for split, rows in zip(SPLITS, (fold >= 1, fold == 0, fold == -1), strict=True):
        s, o, n = sums[split], out[:, rows], int(rows.sum())
        s.n += n
        if classification:
            s.loss += F.cross_entropy(o.transpose(1, 2), y[:, rows], reduction="none").sum(1)
            s.hits += (o.argmax(-1) == y[:, rows]).sum(1)
        else:
            s.loss += ((o - target[:, rows]) ** 2).mean(2).sum(1).double()
            raw, truth = o.double() * out_scale[:, None] + out_mean[:, None], y[:, rows]
            s.sse += ((raw - truth) ** 2).sum(1)
            s.sy += truth.sum(1)
            s.syy += (truth**2).sum(1)
