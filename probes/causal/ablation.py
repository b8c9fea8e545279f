"""Ablation: silence a population of units and measure how much the loss rises, against
as many random units and as many units matched for activity variance.

Zero ablation sets the units to 0; mean ablation to their mean activation over the given
batches (all positions). Ablation edits the hook in one forward pass at every position (see
:mod:`probes.causal.edits`). The loss change is measured per held-out batch, so its
confidence intervals come from a bootstrap over batches; random and matched controls are
averaged over ``n_draws`` draws within each batch first, and the target - control
differences are paired by batch.

Matched units: for each target unit, a unit drawn from the ``pool`` non-target units
closest to it in activity variance (no unit twice in one draw), so that "these units matter"
cannot be explained by "these units are the most active ones".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from probes.causal.edits import check_hook, run_edited
from tasks import Batch

ABLATION_MODES = ("zero", "mean")
Loss = Callable[[torch.Tensor, Batch], torch.Tensor]
"""loss(logits [batch, pos, d_vocab_out], batch) -> scalar, e.g. ``task.loss``."""


@dataclass
class AblationResult:
    hook: str
    mode: str
    units: torch.Tensor
    """[k] the ablated units."""
    clean_loss: torch.Tensor
    """[n_batches] loss without ablation."""
    target: torch.Tensor
    """[n_batches] loss change ablating ``units``."""
    random: torch.Tensor
    """[n_draws, n_batches] loss change ablating k random other units."""
    matched: torch.Tensor
    """[n_draws, n_batches] loss change ablating k other units of matched variance."""

    def summary(
        self, n_boot: int = 2000, level: float = 0.95, seed: int = 0
    ) -> dict[str, tuple[float, float, float]]:
        """(mean, lower, upper) over batches, with a percentile bootstrap interval over
        batches, of the loss change for target, random, matched, target - random and
        target - matched."""
        random, matched = self.random.mean(0), self.matched.mean(0)
        per_batch = {
            "target": self.target,
            "random": random,
            "matched": matched,
            "target - random": self.target - random,
            "target - matched": self.target - matched,
        }
        return {name: bootstrap_ci(v, n_boot, level, seed) for name, v in per_batch.items()}


def bootstrap_ci(
    values: torch.Tensor, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` [n] and its percentile bootstrap interval at ``level``."""
    values = values.double()
    g = torch.Generator().manual_seed(seed)
    means = values[torch.randint(len(values), (n_boot, len(values)), generator=g)].mean(1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(values.mean()), float(lo), float(hi)


@torch.no_grad()
def unit_statistics(model, batches: Sequence[Batch], hook: str) -> tuple[torch.Tensor, ...]:
    """Mean and variance [units] of each unit of ``hook`` over all batches and positions."""
    check_hook(model, hook)
    total = total_sq = None
    n = 0
    for batch in batches:
        _, cache = model.run_with_cache(batch.inputs, names_filter=lambda name: name == hook)
        act = cache[hook].flatten(2).flatten(0, 1).double()  # [batch * pos, units]
        total = act.sum(0) if total is None else total + act.sum(0)
        total_sq = (act * act).sum(0) if total_sq is None else total_sq + (act * act).sum(0)
        n += act.shape[0]
    if n == 0:
        raise ValueError("no batches")
    mean = total / n
    return mean.float(), (total_sq / n - mean * mean).clamp(min=0).float()


def loss_changes(
    model,
    batches: Sequence[Batch],
    hook: str,
    ablated: torch.Tensor,
    mode: str,
    mean: torch.Tensor,
    loss: Loss,
    max_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean loss [n_batches] and the loss change [conditions, n_batches] when the units of
    each row of ``ablated`` [conditions, k] are set to zero or to their ``mean`` [units]."""
    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; valid: {list(ABLATION_MODES)}")
    n_units = len(mean)
    scale = torch.ones(1 + ablated.shape[0], n_units)  # condition 0: clean
    scale[1:].scatter_(1, ablated, 0.0)
    shift = (1 - scale) * mean if mode == "mean" else torch.zeros_like(scale)
    losses = torch.stack(
        [
            run_edited(
                model, b.inputs, hook, scale, shift, lambda lg, b=b: loss(lg, b), None, max_rows
            )
            for b in batches
        ],
        dim=1,
    ).double()  # [1 + conditions, n_batches]
    return losses[0], losses[1:] - losses[0]


def matched_units(
    variance: torch.Tensor,
    units: torch.Tensor,
    others: torch.Tensor,
    n_draws: int,
    g: torch.Generator,
    pool: int = 4,
) -> torch.Tensor:
    """[n_draws, k] units from ``others``, each matched in variance to one target unit."""
    order = (variance[others][None, :] - variance[units][:, None]).abs().argsort(1)  # [k, others]
    draws = []
    for _ in range(n_draws):
        taken: list[int] = []
        for nearest in order.tolist():
            free = [c for c in nearest[:pool] if c not in taken]
            if free:
                taken.append(free[int(torch.randint(len(free), (1,), generator=g))])
            else:  # every candidate taken: the closest free unit
                taken.append(next(c for c in nearest if c not in taken))
        draws.append(others[taken])
    return torch.stack(draws)


@torch.no_grad()
def ablate(
    model,
    batches: Sequence[Batch],
    hook: str,
    units: Sequence[int] | torch.Tensor,
    loss: Loss,
    mode: str = "zero",
    n_draws: int = 20,
    seed: int = 0,
    max_rows: int | None = None,
) -> AblationResult:
    """Ablate ``units`` (indices into the hook's flattened units) of ``hook`` on every
    batch, beside ``n_draws`` draws of as many random and as many variance-matched other
    units; loss changes per batch."""
    mean, variance = unit_statistics(model, batches, hook)
    n_units = len(mean)
    units = torch.as_tensor(units, dtype=torch.long).flatten()
    if len(set(units.tolist())) != len(units) or not all(0 <= u < n_units for u in units.tolist()):
        raise ValueError(
            f"units must be distinct indices in 0..{n_units - 1} (hook {hook!r}), got "
            f"{units.tolist()}"
        )
    k = len(units)
    if n_units - k < k:
        raise ValueError(f"hook {hook!r} has {n_units} units: too few to draw {k} others")
    g = torch.Generator().manual_seed(seed)
    others = torch.tensor([u for u in range(n_units) if u not in set(units.tolist())])
    random = [others[torch.randperm(len(others), generator=g)[:k]] for _ in range(n_draws)]
    matched = matched_units(variance, units, others, n_draws, g)
    ablated = torch.cat([units[None], torch.stack(random), matched])
    clean, change = loss_changes(model, batches, hook, ablated, mode, mean, loss, max_rows)
    return AblationResult(
        hook, mode, units, clean, change[0], change[1 : 1 + n_draws], change[1 + n_draws :]
    )


@torch.no_grad()
def ablation_sweep(
    model,
    batches: Sequence[Batch],
    hook: str,
    loss: Loss,
    mode: str = "zero",
    max_rows: int | None = None,
) -> torch.Tensor:
    """Loss change [units, n_batches] from ablating each unit of ``hook`` alone."""
    mean, _ = unit_statistics(model, batches, hook)
    single = torch.arange(len(mean))[:, None]
    return loss_changes(model, batches, hook, single, mode, mean, loss, max_rows)[1]
