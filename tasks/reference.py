"""Reference predictors: what a network must beat before a study counts it as trained.

Each reference predictor lacks what some study is about (the sequence's history, the time
elapsed, the position...) and is fit without the network on a large sample of the task's
training distribution. Called on a batch it returns "logits" ``[batch, pos, d_vocab_out]``
like a model, so the task's own :meth:`~tasks.Task.loss` and :meth:`~tasks.Task.metrics`
score it on the very batches the network is evaluated on (:func:`models.train.evaluate`),
and every metric has a reference value beside the network's. A study's
:class:`~analysis.tables.Gate` names the references a run must beat.

A task declares its predictors in :meth:`tasks.Task.reference_predictors`. Token tasks
default to three count tables (:class:`CountTable`): ``P(target | key)`` by counting,
Laplace-smoothed (one pseudo-count per target class), log-probabilities as logits:

============ ================== ====================================================
name         key                the best predictor that...
============ ================== ====================================================
history_free the current input  sees only the present token (no history)
clock        the position       knows how many steps have passed, nothing else
unigram      none               knows only how often each target occurs
============ ================== ====================================================

Counting is exact in the limit; with ``2**18`` scored targets the estimation error is far
below any gate (tested on Mess3 against the analytic current-token predictor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tasks.base import IGNORE_INDEX, Batch, Task

FIT_CHUNK = 2048
"""Sequences per sample batch while fitting."""


class Reference:
    """A reference predictor: :meth:`observe` sample batches until it has seen
    ``fit_targets`` scored targets, :meth:`finish`, then call it on a batch like a model."""

    name: str
    fit_targets: int
    """Scored targets it is fit on (0: it needs no fitting)."""

    def observe(self, task: Task, batch: Batch) -> None:
        """Take in one sample batch of ``task``'s training distribution."""
        raise NotImplementedError

    def finish(self) -> None:
        """Fit on what was observed."""

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Logits [batch, pos, d_vocab_out] (float64) on the batch's device."""
        raise NotImplementedError


COUNT_KEYS = ("input", "position", "none")


class CountTable(Reference):
    """``P(target | key)`` of a token task by Laplace-smoothed counts, where ``key`` is the
    current input token (``"input"``), the index in the sequence (``"position"``) or
    nothing (``"none"``). Logits: log-probabilities [batch, pos, d_vocab_out]."""

    fit_targets = 2**18

    def __init__(self, name: str, key: str):
        if key not in COUNT_KEYS:
            raise ValueError(f"count table {name!r}: unknown key {key!r}; valid: {COUNT_KEYS}")
        self.name, self.key = name, key
        self.counts: torch.Tensor | None = None  # [n_keys, d_vocab_out] float64
        self.log_probs: torch.Tensor | None = None

    def keys(self, batch: Batch) -> torch.Tensor:
        """[batch, pos] int64 key of every position."""
        if self.key == "input":
            return batch.inputs.long()
        if self.key == "position":
            return torch.arange(batch.seq_len, device=batch.inputs.device).expand(
                batch.batch_size, -1
            )
        return torch.zeros_like(batch.targets)

    def observe(self, task: Task, batch: Batch) -> None:
        if task.d_vocab_in is None or batch.targets.dtype.is_floating_point:
            raise TypeError(
                f"count table {self.name!r} needs token inputs and class targets, which task "
                f"{task.name!r} does not have: declare its own reference_predictors()"
            )
        n_keys = {"input": task.d_vocab_in, "position": task.seq_len, "none": 1}[self.key]
        n_out = task.d_vocab_out
        if self.counts is None:
            self.counts = torch.zeros(n_keys, n_out, dtype=torch.float64)
        scored = batch.targets != IGNORE_INDEX
        index = self.keys(batch)[scored].cpu() * n_out + batch.targets[scored].cpu()
        self.counts += torch.bincount(index, minlength=n_keys * n_out).view(n_keys, n_out)

    def finish(self) -> None:
        smoothed = self.counts + 1
        self.log_probs = (smoothed / smoothed.sum(1, keepdim=True)).log()

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.log_probs.to(batch.inputs.device)[self.keys(batch)]


def token_references() -> tuple[Reference, ...]:
    """The generic reference predictors of a token task (see the module's table)."""
    return (
        CountTable("history_free", "input"),
        CountTable("clock", "position"),
        CountTable("unigram", "none"),
    )


def fit_references(
    task: Task, generator_of: Callable[[int], torch.Generator]
) -> dict[str, Reference]:
    """``task``'s reference predictors (name -> predictor), each fit on sample batches 0, 1,
    ... (drawn with ``generator_of(index)``) until it has seen its ``fit_targets``."""
    references = {ref.name: ref for ref in task.reference_predictors()}
    if len(references) != len(task.reference_predictors()):
        raise ValueError(f"task {task.name!r} declares two reference predictors of one name")
    seen, index = 0, 0
    while hungry := [ref for ref in references.values() if seen < ref.fit_targets]:
        batch = task.sample(FIT_CHUNK, generator_of(index))
        for ref in hungry:
            ref.observe(task, batch)
        scored = scored_targets(batch)
        if not scored:
            raise ValueError(
                f"task {task.name!r}: a sample of {FIT_CHUNK} sequences scores nothing"
            )
        seen += scored
        index += 1
    for ref in references.values():
        ref.finish()
    return references


def scored_targets(batch: Batch) -> int:
    """Positions with a target: every position of a float target, else those not ignored."""
    if batch.targets.dtype.is_floating_point:
        return batch.batch_size * batch.seq_len
    return int((batch.targets != IGNORE_INDEX).sum())
