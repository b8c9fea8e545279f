"""What a probe is fit to: a target's labels, and their control task.

:func:`encode` turns raw latent values into what a probe predicts: regression -> float
[n, k] (trailing dims flattened); circular -> (cos, sin) of ``2 pi value / period``, [n, 2];
classification -> class ids [n].

:class:`ControlTask` is Hewitt & Liang's (2019) control: the same output space, but the
labels reassigned by a fixed random map over the latent's values, so that a probe can only
score on it by memorising value -> label pairs, never by reading structure. Selectivity =
score on the real labels - score on the control task (same probe, same capacity).

* Classification: each class is mapped to a class drawn from the empirical distribution of
  the labels (H&L's construction), fixed for the whole run. Several classes may share an
  image, so the control's chance accuracy is higher than the real task's (see
  ``ProbeFit.selectivity_over_chance``).
* Regression and circular: the value is binned, per dimension, into its distinct values
  when there are at most ``n_bins`` (default 20) of them (grid positions, time steps),
  else into ``n_bins`` quantile bins; a cell is a tuple of bins. Each cell is mapped to a
  cell drawn from the empirical distribution of cells and takes that cell's centroid
  (circular mean for angles) as its control value. The control values are real values of
  the latent, drawn with the latent's own frequencies (the output space and, in
  expectation, the marginal distribution are kept), but which cell gets which value is
  random, so any smooth or linear structure linking the activations to the value is
  destroyed. With c cells a random image still correlates with the value by chance, about
  1/c of R² on average, which is why the default bins are not coarser. Cells never seen
  when the map was drawn (rare values outside the sample) map by a fixed hash of their id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tasks.targets import ProbeTarget


def encode(target: ProbeTarget, labels: torch.Tensor) -> torch.Tensor:
    """Raw latent values [n, ...] -> regression [n, k] / circular [n, 2] float64, or
    classification class ids [n] int64."""
    if target.kind == "classification":
        if labels.dtype.is_floating_point and not torch.equal(labels, labels.round()):
            raise ValueError(f"classification target {target.latent!r}: labels must be integers")
        classes = labels.long()
        if classes.ndim != 1:
            raise ValueError(f"classification target {target.latent!r}: expected labels [n]")
        if classes.numel() and not 0 <= int(classes.min()) <= int(classes.max()) < target.n_classes:
            raise ValueError(
                f"classification target {target.latent!r}: labels outside 0..{target.n_classes - 1}"
            )
        return classes
    if target.kind == "circular":
        if labels.ndim != 1:
            raise ValueError(f"circular target {target.latent!r}: expected angles [n]")
        angle = 2 * math.pi * labels.double() / target.period
        return torch.stack([angle.cos(), angle.sin()], dim=1)
    return labels.double().reshape(labels.shape[0], -1)


@dataclass
class ControlTask:
    """A fixed random relabelling of a target's raw values (see the module docstring)."""

    target: ProbeTarget
    table: torch.Tensor
    """classification: [n_classes] the new class of each class; else [n_cells, k] the new
    value of each seen cell."""
    edges: list[torch.Tensor]
    """Per value dimension, the bin edges (empty for classification)."""
    cells: torch.Tensor
    """[n_cells] sorted ids of the cells seen when the map was drawn."""

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        """Control labels: class ids [n], or float64 values of the shape of ``labels``."""
        if self.target.kind == "classification":
            return self.table[labels.long()]
        ids = cell_ids(continuous_values(self.target, labels), self.edges)
        index = torch.searchsorted(self.cells, ids).clamp(max=len(self.cells) - 1)
        unseen = self.cells[index] != ids
        index[unseen] = ids[unseen] % len(self.cells)
        return self.table[index].reshape(labels.shape)


def continuous_values(target: ProbeTarget, labels: torch.Tensor) -> torch.Tensor:
    """Raw labels as [n, k] float64 (angles wrapped into [0, period))."""
    values = labels.double().reshape(labels.shape[0], -1)
    return values % target.period if target.kind == "circular" else values


def cell_ids(values: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
    """Mixed-radix id [n] of each row's bins: values [n, k], edges per dimension."""
    ids = torch.zeros(values.shape[0], dtype=torch.long)
    for j, e in enumerate(edges):
        ids = ids * (len(e) + 1) + torch.searchsorted(e, values[:, j].contiguous())
    return ids


def bin_edges(column: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Edges of one dimension: midpoints between the distinct values when there are at
    most ``n_bins``, else the inner quantiles."""
    distinct = column.unique()
    if len(distinct) <= n_bins:
        return (distinct[1:] + distinct[:-1]) / 2
    quantiles = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    return torch.quantile(column, quantiles).unique()


def control_task(
    target: ProbeTarget,
    sample: torch.Tensor,
    class_counts: torch.Tensor | None = None,
    n_bins: int = 20,
    seed: int = 0,
) -> ControlTask:
    """Draw the control task of ``target``: from ``class_counts`` [n_classes] for a
    classification, else from ``sample`` [m, ...], a uniform sample of the raw labels."""
    g = torch.Generator().manual_seed(seed)
    if target.kind == "classification":
        if class_counts is None or class_counts.sum() == 0:
            raise ValueError("a classification control task needs the class counts")
        table = torch.multinomial(class_counts.double(), target.n_classes, True, generator=g)
        return ControlTask(target, table, [], torch.empty(0, dtype=torch.long))
    if sample.shape[0] == 0:
        raise ValueError(f"no labels of {target.latent!r} to draw a control task from")
    values = continuous_values(target, sample)  # [m, k]
    edges = [bin_edges(values[:, j], n_bins) for j in range(values.shape[1])]
    cells, which, counts = cell_ids(values, edges).unique(return_inverse=True, return_counts=True)
    if target.kind == "circular":  # circular mean of each cell
        angle = 2 * math.pi * values[:, 0] / target.period
        unit = torch.zeros(len(cells), 2, dtype=torch.float64)
        unit.index_add_(0, which, torch.stack([angle.cos(), angle.sin()], 1))
        centroid = torch.atan2(unit[:, 1:], unit[:, :1]) % (2 * math.pi) * target.period
        centroid /= 2 * math.pi
    else:
        centroid = torch.zeros(len(cells), values.shape[1], dtype=torch.float64)
        centroid.index_add_(0, which, values)
        centroid /= counts[:, None]
    drawn = torch.multinomial(counts.double(), len(cells), True, generator=g)
    return ControlTask(target, centroid[drawn], edges, cells)
