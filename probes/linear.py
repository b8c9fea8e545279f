"""Linear probes from a stream of batches: ridge regression (regression and circular
targets) and L2-penalised multinomial logistic regression (classification targets).

Both fit several label tasks at once (the real labels and their control task), each with
its own penalty chosen by grouped K-fold cross-validation on the training folds, refit on
all of them and scored on the held-out test environments.

Ridge uses :mod:`probes.ridge` (exact, from streamed sufficient statistics; the real and
control tasks share XᵀX). The logistic probe is trained by mini-batch Adam on standardised
activations, every (task, penalty, left-out fold) model at once in one matrix product per
mini-batch: K models per penalty for the cross-validation, one on all training folds. It
minimises, for each model, the mean cross-entropy over its training rows plus
``penalty / 2 * |W|²`` (bias not penalised), the objective of e.g. scikit-learn's
``LogisticRegression(C=1 / (n * penalty))`` on standardised features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probes.ridge import RidgeStats, cross_validated_ridge, fit, r2

Rows = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
"""Called once per pass: (acts [n, d] float32, raw labels [n, ...], fold [n]) batches."""
LabelTask = Callable[[torch.Tensor], torch.Tensor]
"""Raw labels [n, ...] -> what the probe predicts (encoded real or control labels)."""


@dataclass
class LinearProbe:
    """outputs = acts @ weight + bias, in the activations' own coordinates."""

    weight: torch.Tensor
    """[d, k] float64 (classification: one column of logits per class)."""
    bias: torch.Tensor
    """[k]"""
    classification: bool

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        """acts [n, d] -> outputs (classification: logits) [n, k]."""
        return acts.double() @ self.weight + self.bias

    def direction(self, output: int = 0) -> torch.Tensor:
        """Unit vector [d] along which ``output`` grows fastest (for class logits: the
        class's logit against the mean logit, since the softmax ignores common shifts)."""
        w = self._column(output)
        return (w / w.norm()).float()

    def gain(self, output: int = 0) -> float:
        """Change of ``output`` per unit step along :meth:`direction`."""
        return float(self._column(output).norm())

    def _column(self, output: int) -> torch.Tensor:
        if not 0 <= output < self.weight.shape[1]:
            raise IndexError(f"output {output} not in 0..{self.weight.shape[1] - 1}")
        w = self.weight[:, output]
        return w - self.weight.mean(1) if self.classification else w


@dataclass
class TaskFit:
    """One label task's fit, scored on held-out environments."""

    score: float
    train_score: float
    selection_score: float
    """Cross-validated score of the chosen penalty (MLP: validation score)."""
    penalty: float | None
    epoch: int | None
    n_train: int
    n_test: int
    probe: object


def fit_ridge(rows: Rows, tasks: list[LabelTask], folds: int) -> list[TaskFit]:
    """Ridge probes of every task from one pass (R² scores, pooled over outputs)."""
    stats: list[RidgeStats] = []
    widths: list[int] = []
    for x, labels, fold in rows():
        ys = [task(labels) for task in tasks]
        if not stats:
            widths = [y.shape[1] for y in ys]
            stats = [RidgeStats(x.shape[1], sum(widths)) for _ in range(folds + 1)]
        y = torch.cat(ys, 1)
        for f in range(-1, folds):  # index -1: the test set
            stats[f].add(x[fold == f], y[fold == f])
    fits, start = [], 0
    for width in widths:
        per_fold = [columns(s, slice(start, start + width)) for s in stats]
        start += width
        result = cross_validated_ridge(per_fold[-1], per_fold[:-1])
        train = sum(per_fold[1:-1], per_fold[0])
        w, b = fit(train, result.alpha)
        fits.append(
            TaskFit(
                result.r2_test,
                r2(train, w, b),
                result.r2_cv,
                result.alpha,
                None,
                result.n_train,
                result.n_test,
                LinearProbe(w, b, classification=False),
            )
        )
    return fits


def columns(stats: RidgeStats, cols: slice) -> RidgeStats:
    """The statistics of outputs ``cols`` only (XᵀX shared, not copied)."""
    out = RidgeStats(stats.d, 0)
    out.k, out.n, out.sx, out.xx = cols.stop - cols.start, stats.n, stats.sx, stats.xx
    out.sy, out.xy, out.yy = stats.sy[cols], stats.xy[:, cols], stats.yy[cols]
    return out


@dataclass
class LogisticConfig:
    penalties: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    """Candidate L2 penalties on the weights of standardised activations."""
    steps: int = 2000
    """At least this many Adam steps: epochs = ceil(steps / steps per epoch)."""
    batch_size: int = 256
    lr: float = 0.1
    """Adam's learning rate, decayed to 0 on a cosine over all steps."""


@dataclass
class Standardizer:
    """acts [n, d] -> (acts - mean) / scale; constant features keep scale 1."""

    mean: torch.Tensor
    """[d]"""
    scale: torch.Tensor
    """[d]"""

    @classmethod
    def from_moments(cls, mean: torch.Tensor, std: torch.Tensor) -> Standardizer:
        return cls(mean.float(), torch.where(std > 1e-8, std, torch.ones_like(std)).float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def linear_in_acts(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(weight, bias) acting on raw activations of ``z @ w + b`` on standardised ones."""
        w = w.double() / self.scale.double()[:, None]
        return w, b.double() - self.mean.double() @ w


def cosine_adam(params: list[torch.Tensor], lr: float, steps: int, weight_decay: float = 0.0):
    """Adam with its learning rate decayed from ``lr`` to 0 on a cosine over ``steps``."""
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
    )
    return opt, schedule


def fit_logistic(
    rows: Rows,
    tasks: list[LabelTask],
    n_classes: int,
    standardize: Standardizer,
    steps_per_epoch: int,
    folds: int,
    config: LogisticConfig,
    seed: int,
) -> list[TaskFit]:
    """Logistic probes of every task (accuracy scores); ``steps_per_epoch``: mini-batches
    in one pass over the training folds."""
    n_tasks, n_pen, n_models = len(tasks), len(config.penalties), folds + 1
    g = torch.Generator().manual_seed(seed)
    shape = (n_tasks, n_pen, n_models, n_classes)  # model (task, penalty, left-out fold | all)
    penalty = torch.tensor(config.penalties)[None, None, :, None, None]
    d = standardize.mean.numel()
    weight = torch.zeros(d, math.prod(shape), requires_grad=True)
    bias = torch.zeros(math.prod(shape), requires_grad=True)
    steps_per_epoch = max(steps_per_epoch, 1)
    epochs = math.ceil(config.steps / steps_per_epoch)
    opt, schedule = cosine_adam([weight, bias], config.lr, epochs * steps_per_epoch)
    for _ in range(epochs):
        for x, labels, fold in rows():
            train = fold >= 0
            z, fold = standardize(x[train]), fold[train]
            y = torch.stack([task(labels[train]) for task in tasks], 1)  # [n, tasks]
            for idx in torch.randperm(len(z), generator=g).split(config.batch_size):
                logits = (z[idx] @ weight + bias).view(-1, *shape)
                target = y[idx][:, :, None, None, None].expand(-1, n_tasks, n_pen, n_models, 1)
                nll = -F.log_softmax(logits, -1).gather(-1, target)[..., 0]  # [m, T, P, K+1]
                member = fold[idx][:, None] != torch.arange(n_models)  # left-out fold / none
                mean_nll = (nll * member[:, None, None, :]).sum(0) / member.sum(0).clamp(min=1)
                w = weight.view(d, *shape)
                loss = mean_nll.sum() + (penalty / 2 * w * w).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
    return score_logistic(rows, tasks, standardize, weight.detach(), bias.detach(), shape, config)


@torch.no_grad()
def score_logistic(
    rows: Rows,
    tasks: list[LabelTask],
    standardize: Standardizer,
    weight: torch.Tensor,
    bias: torch.Tensor,
    shape: tuple[int, ...],
    config: LogisticConfig,
) -> list[TaskFit]:
    """Accuracy of every model on its held-out rows; the penalty of best mean CV accuracy
    (ties: the largest) is reported, with its model fit on all training folds."""
    n_tasks, n_pen, n_models, n_classes = shape
    folds = n_models - 1
    hits_cv = torch.zeros(n_tasks, n_pen, folds)
    rows_cv = torch.zeros(folds)
    hits_test, hits_train = torch.zeros(n_tasks, n_pen), torch.zeros(n_tasks, n_pen)
    n_test = n_train = 0
    for x, labels, fold in rows():
        y = torch.stack([task(labels) for task in tasks], 1)  # [n, tasks]
        pred = (standardize(x) @ weight + bias).view(-1, *shape).argmax(-1)  # [n, T, P, K+1]
        hit = (pred == y[:, :, None, None]).float()
        for j in range(folds):
            hits_cv[:, :, j] += hit[fold == j, :, :, j].sum(0)
            rows_cv[j] += (fold == j).sum()
        hits_test += hit[fold == -1, :, :, folds].sum(0)
        hits_train += hit[fold >= 0, :, :, folds].sum(0)
        n_test += int((fold == -1).sum())
        n_train += int((fold >= 0).sum())
    present = rows_cv > 0
    cv = (hits_cv[:, :, present] / rows_cv[present]).mean(-1)  # [T, P]
    fits = []
    w_all, b_all = weight.view(-1, *shape), bias.view(*shape)
    for t in range(n_tasks):
        best = max(range(n_pen), key=lambda p: (float(cv[t, p]), config.penalties[p]))
        w, b = standardize.linear_in_acts(w_all[:, t, best, folds], b_all[t, best, folds])
        fits.append(
            TaskFit(
                float(hits_test[t, best] / max(n_test, 1)),
                float(hits_train[t, best] / max(n_train, 1)),
                float(cv[t, best]),
                config.penalties[best],
                None,
                n_train,
                n_test,
                LinearProbe(w, b, classification=True),
            )
        )
    return fits
