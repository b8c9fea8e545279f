"""One entry point for every probe: :func:`fit_probe` (kind, data, target) -> :class:`ProbeFit`.

Kinds, by the target's kind:

  ridge     regression, circular   closed-form ridge, penalty by grouped CV      R²
  logistic  classification         multinomial logistic, L2 penalty by grouped CV accuracy
  mlp       any                    one hidden layer, early stopping on a         R² / accuracy
                                   validation fold of environments

Protocol: environments (``groups``) are split into a held-out test set and K folds
(:func:`probes.ridge.fold_of`); the score is on the test environments only. Unless
``control=False``, the same probe (same procedure, same capacity) is fit to the target's
control task (:mod:`probes.labels`) in the same passes, and selectivity = score - control
score (Hewitt & Liang 2019); ``selectivity_over_chance`` measures both scores above their
own chance level (see :class:`ProbeFit`). Spatial regression targets also get the
proximity error of the held-out predictions (:mod:`probes.proximity`) on a uniform sample
of the test rows.

Data: any re-iterable of (acts [n, d], labels [n, ...], groups [n]) batches
(:mod:`probes.stream`). A first pass summarises it (row counts, activation moments of the
training folds, the label distribution, a sample of test rows); each probe then streams it
again (ridge: once; logistic: ceil(steps / steps per epoch) epochs and a scoring pass; MLP:
one pass per epoch plus one). Memory does not depend on the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from probes.labels import control_task, encode
from probes.linear import (
    LabelTask,
    LinearProbe,
    LogisticConfig,
    Rows,
    Standardizer,
    TaskFit,
    fit_logistic,
    fit_ridge,
)
from probes.mlp import MLPConfig, MLPProbe, fit_mlp
from probes.proximity import proximity_error
from probes.stream import ProbeBatch, folded
from tasks.targets import ProbeTarget

PROBE_KINDS = {
    "ridge": ("regression", "circular"),
    "logistic": ("classification",),
    "mlp": ("regression", "circular", "classification"),
}
"""Probe kind -> the target kinds it fits."""


def probe_kinds(target: ProbeTarget) -> list[str]:
    """The probe kinds that fit ``target``."""
    return [kind for kind, fits in PROBE_KINDS.items() if target.kind in fits]


@dataclass
class ProbeFit:
    kind: str
    target: str
    """The target's name (latent, with @filter)."""
    metric: str
    """"r2" (regression, circular: pooled over outputs) or "accuracy"."""
    score: float
    """On the held-out test environments."""
    train_score: float
    selection_score: float
    """Mean cross-validated score of the chosen penalty (ridge, logistic), or the score on
    the validation fold at the chosen epoch (mlp)."""
    penalty: float | None
    """Chosen penalty: ridge alpha (relative to trace(XᵀX)/d), logistic L2 penalty on
    standardised activations; None for the MLP."""
    epoch: int | None
    """Chosen epoch (MLP)."""
    n_train: int
    """Training rows (MLP: without the validation fold)."""
    n_test: int
    baseline: float = 0.0
    """Chance: the score of the best constant prediction fit on the training folds
    (classification: the majority class's frequency on the test rows; R² already measures
    against the mean, so 0)."""
    control_score: float | None = None
    control_train_score: float | None = None
    control_baseline: float | None = None
    selectivity: float | None = None
    """score - control_score (Hewitt & Liang)."""
    selectivity_over_chance: float | None = None
    """(score - baseline) - (control_score - control_baseline). A many-to-one control map
    concentrates the labels on fewer classes, so its chance accuracy is higher than the real
    task's (6 classes: often 0.35 against 0.2) and pure noise has a negative selectivity;
    measured above each task's chance, noise has none. Equal to selectivity for R²."""
    proximity_error: float | None = None
    """Mean proximity error on held-out rows (spatial regression targets)."""
    probe: LinearProbe | MLPProbe | None = field(default=None, repr=False)
    """The fitted probe (real labels): ``probe.predict(acts [n, d])``."""


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, as the lab's commands do. Adam's
    second moments of gradients that underflow (classes a probe never predicts) reach
    denormals, which made a logistic fit 25x slower. Torch has no getter for the setting,
    so the previous state is read off a denormal product and restored afterwards."""
    was_on = (torch.tensor([1e-39]) * 1.0).item() == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


class Reservoir:
    """A uniform sample without replacement of at most ``size`` rows of a stream: each row
    gets a random key and the rows of the ``size`` smallest keys are kept."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator
        self.keys = torch.empty(0)
        self.columns: list[torch.Tensor] = []

    def add(self, *columns: torch.Tensor) -> None:
        keys = torch.cat([self.keys, torch.rand(columns[0].shape[0], generator=self.generator)])
        if self.columns:
            columns = tuple(torch.cat(pair) for pair in zip(self.columns, columns, strict=True))
        if len(keys) > self.size:
            keep = keys.topk(self.size, largest=False).indices
            keys, columns = keys[keep], tuple(c[keep] for c in columns)
        self.keys, self.columns = keys, list(columns)


@dataclass
class Summary:
    """What one pass over the data says before any probe is fit."""

    rows: torch.Tensor
    """[batches, folds + 1] rows of each batch in the test set (column 0) and each fold."""
    mean: torch.Tensor
    """[d] activation mean over the training folds."""
    std: torch.Tensor
    """[d]"""
    labels: torch.Tensor
    """A uniform sample of the raw labels of all rows."""
    class_counts: torch.Tensor | None
    """[2, n_classes] class counts in the training folds and in the test set."""
    test_acts: torch.Tensor
    """A uniform sample of the test rows' activations [m, d] ..."""
    test_labels: torch.Tensor
    """... and raw labels."""

    def steps_per_epoch(self, first_fold: int, batch_size: int) -> int:
        """Mini-batches in one epoch over folds ``first_fold``.. of every batch."""
        per_batch = self.rows[:, 1 + first_fold :].sum(1)
        return int(torch.ceil(per_batch / batch_size).sum())


def summarize(
    rows: Iterable, target: ProbeTarget, folds: int, seed: int, samples: int, test_samples: int
) -> Summary:
    """One pass: row counts, moments, label sample (and class counts), test-row sample."""
    g = torch.Generator().manual_seed(seed)
    label_sample, test_sample = Reservoir(samples, g), Reservoir(test_samples, g)
    counts, total, total_sq = [], None, None
    class_counts = torch.zeros(2, target.n_classes or 0, dtype=torch.long)
    for x, labels, fold in rows:
        encoded = encode(target, labels)  # checks the labels
        if target.kind == "classification":
            class_counts[0] += torch.bincount(encoded[fold >= 0], minlength=target.n_classes)
            class_counts[1] += torch.bincount(encoded[fold == -1], minlength=target.n_classes)
        counts.append(torch.bincount(fold + 1, minlength=folds + 1))
        train = x[fold >= 0].double()
        if total is None:
            total, total_sq = torch.zeros(x.shape[1], dtype=torch.float64), 0
        total = total + train.sum(0)
        total_sq = total_sq + (train * train).sum(0)
        label_sample.add(labels)
        test = fold == -1
        test_sample.add(x[test], labels[test])
    if total is None:
        raise ValueError("no probe data: the source gave no batches")
    rows = torch.stack(counts)
    n_train, n_test = int(rows[:, 1:].sum()), int(rows[:, 0].sum())
    if n_train == 0 or n_test == 0:
        raise ValueError(
            f"need rows in both the training folds and the test set, got {n_train} and "
            f"{n_test}: too few environments (groups)?"
        )
    mean = total / n_train
    std = (total_sq / n_train - mean**2).clamp(min=0).sqrt()
    return Summary(
        rows,
        mean,
        std,
        label_sample.columns[0],
        class_counts if target.kind == "classification" else None,
        *test_sample.columns,
    )


def fit_probe(
    kind: str,
    batches: Iterable[ProbeBatch],
    target: ProbeTarget,
    *,
    control: bool = True,
    folds: int = 5,
    test_fraction: float = 0.25,
    seed: int = 0,
    config: LogisticConfig | MLPConfig | None = None,
    label_samples: int = 100_000,
    proximity_samples: int = 4000,
) -> ProbeFit:
    """Fit probe ``kind`` to ``target`` on ``batches`` (re-iterable; see the module
    docstring), with its control task unless ``control=False``. ``config``: the logistic
    or MLP training settings (None: defaults; ridge has none). ``label_samples`` labels
    draw the control task's bins; ``proximity_samples`` test rows give the proximity
    error."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; valid: {list(PROBE_KINDS)}")
    if target.kind not in PROBE_KINDS[kind]:
        raise ValueError(
            f"probe {kind!r} does not fit {target.kind} target {target.name!r}; "
            f"use one of {probe_kinds(target)}"
        )
    expected = {"ridge": type(None), "logistic": LogisticConfig, "mlp": MLPConfig}[kind]
    if config is not None and not isinstance(config, expected):
        raise TypeError(f"probe {kind!r} takes a {expected.__name__} config, got {config!r}")
    if iter(batches) is batches:
        raise TypeError(
            "batches is a one-shot iterator; probes read the data several times: pass a list "
            "or a re-iterable source (probes.stream.store_batches, model_batches)"
        )
    if folds < 2:
        raise ValueError(f"need folds >= 2, got {folds}")

    def rows():
        return folded(batches, folds, test_fraction)

    with flush_denormals():
        summary = summarize(rows(), target, folds, seed, label_samples, proximity_samples)
        tasks = [lambda labels: encode(target, labels)]
        if control:
            counts = None if summary.class_counts is None else summary.class_counts.sum(0)
            relabel = control_task(target, summary.labels, counts, seed=seed)
            tasks.append(lambda labels: encode(target, relabel(labels)))
        fits = fit_tasks(kind, rows, tasks, target, summary, folds, config, seed)

    real = fits[0]
    baselines = [0.0] * len(fits)
    if summary.class_counts is not None:
        baselines = [majority_baseline(summary.class_counts)]
        if control:  # the control labels' counts: each class's counts moved to its new class
            moved = torch.zeros_like(summary.class_counts).index_add_(
                1, relabel.table, summary.class_counts
            )
            baselines.append(majority_baseline(moved))
    result = ProbeFit(
        kind,
        target.name,
        "accuracy" if target.kind == "classification" else "r2",
        real.score,
        real.train_score,
        real.selection_score,
        real.penalty,
        real.epoch,
        real.n_train,
        real.n_test,
        baseline=baselines[0],
        probe=real.probe,
    )
    if control:
        result.control_score = fits[1].score
        result.control_train_score = fits[1].train_score
        result.control_baseline = baselines[1]
        result.selectivity = real.score - fits[1].score
        excess = (real.score - baselines[0]) - (fits[1].score - baselines[1])
        result.selectivity_over_chance = excess
    if target.spatial and target.kind == "regression":
        true = encode(target, summary.test_labels)
        predicted = real.probe.predict(summary.test_acts)
        result.proximity_error = float(proximity_error(true, predicted).mean())
    return result


def majority_baseline(class_counts: torch.Tensor) -> float:
    """Test accuracy of always predicting the training folds' most frequent class, from
    class counts [2, n_classes] (training folds, test set)."""
    train, test = class_counts
    return float(test[train.argmax()] / test.sum().clamp(min=1))


def fit_tasks(
    kind: str,
    rows: Rows,
    tasks: list[LabelTask],
    target: ProbeTarget,
    summary: Summary,
    folds: int,
    config: LogisticConfig | MLPConfig | None,
    seed: int,
) -> list[TaskFit]:
    """Probe ``kind`` fit to every label task in the same passes."""
    if kind == "ridge":
        return fit_ridge(rows, tasks, folds)
    standardize = Standardizer.from_moments(summary.mean, summary.std)
    if kind == "logistic":
        config = config or LogisticConfig()
        steps = summary.steps_per_epoch(0, config.batch_size)
        return fit_logistic(rows, tasks, target.n_classes, standardize, steps, folds, config, seed)
    config = config or MLPConfig()
    classification = target.kind == "classification"
    if classification:  # the outputs are logits: not standardised
        k = target.n_classes
        moments = (torch.zeros(len(tasks), k, dtype=torch.float64), torch.ones(len(tasks), k))
    else:
        encoded = torch.stack([task(summary.labels) for task in tasks])  # [tasks, m, k]
        k = encoded.shape[2]
        moments = (encoded.mean(1), encoded.std(1, unbiased=False))
    steps = summary.steps_per_epoch(1, config.batch_size)
    return fit_mlp(rows, tasks, k, classification, standardize, moments, steps, config, seed)
