"""Shuffle significance for every cell-type label, all units and many shuffles at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange


@dataclass
class ShuffleNull:
    """Observed scores against a circular-shift null (see :func:`shuffle_null`)."""

    observed: torch.Tensor  # [units]
    null: torch.Tensor  # [n_shuffles, units]
    p_values: torch.Tensor  # [units] (1 + #null >= observed) / (1 + n_shuffles)
    threshold_95: torch.Tensor  # [units] 95th percentile of the null
    threshold_99: torch.Tensor  # [units]
    significant: torch.Tensor  # [units] bool: observed > threshold_95


def shuffle_null(
    metric: Callable[..., torch.Tensor],
    activity: torch.Tensor,
    *args,
    n_shuffles: int = 1000,
    min_shift: int | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = 2**24,
    **kwargs,
) -> ShuffleNull:
    """Significance of ``metric(activity, *args, **kwargs) -> [units]`` for every unit.

    activity [samples, units]. Each shuffle shifts every unit's activity circularly in time
    by its own random offset in ``[min_shift, samples - min_shift]`` (default
    ``samples // 20``), which keeps each unit's temporal structure but breaks its relation
    to the behavioural variables in ``args`` (the standard place/grid/time-cell test, e.g.
    Langston et al. 2010). Shuffles are batched as extra units: ``metric`` is called on
    [samples, chunk * units] blocks of at most ``max_elements`` values, so it must treat
    units independently.
    """
    if activity.ndim != 2:
        raise ValueError(f"activity must be [samples, units], got {tuple(activity.shape)}")
    samples, units = activity.shape
    min_shift = samples // 20 if min_shift is None else min_shift
    if not 0 <= min_shift <= samples // 2:
        raise ValueError(
            f"min_shift must be in [0, samples // 2 = {samples // 2}], got {min_shift}"
        )
    observed = metric(activity, *args, **kwargs)
    shifts = torch.randint(
        min_shift, samples - min_shift + 1, (n_shuffles, units), generator=generator
    ).to(activity.device)
    # Every circular shift of a unit is a window of its activity repeated twice:
    # shifted[t] = activity[(t - k) mod samples] = doubled[samples - k + t].
    doubled = rearrange(torch.cat([activity, activity]), "t u -> u t")
    windows = doubled.unfold(1, samples, 1)  # [units, samples + 1, samples], a view
    column = torch.arange(units, device=activity.device)
    chunk = max(1, max_elements // (samples * units))
    null = []
    for block in shifts.split(chunk):  # [chunk, units]
        shifted = rearrange(windows[column, samples - block], "c u t -> t (c u)")
        null.append(metric(shifted, *args, **kwargs).reshape(len(block), units))
    null = torch.cat(null)
    p_values = (1 + (null >= observed).sum(0)) / (1 + n_shuffles)
    thresholds = torch.quantile(
        null.double(), torch.tensor([0.95, 0.99], dtype=torch.float64, device=null.device), dim=0
    )
    return ShuffleNull(
        observed, null, p_values, thresholds[0], thresholds[1], observed > thresholds[0]
    )
