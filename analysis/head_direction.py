"""Head-direction cells: directional tuning curves and their mean resultant length.

Torch, vectorised over units, on whatever device the inputs are on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.binning import node_rate_maps, non_negative_rates


@dataclass
class HeadDirection:
    """Head-direction tuning (see :func:`head_direction_scores`)."""

    mean_resultant_length: torch.Tensor  # [units] in [0, 1]
    preferred: torch.Tensor  # [units] radians in (-pi, pi]
    tuning: torch.Tensor  # [units, bins] mean activity per direction bin (NaN: unvisited)


def head_direction_scores(
    heading: torch.Tensor, activity: torch.Tensor, bins: int = 60, signed: str = "rectify"
) -> HeadDirection:
    """Head-direction cells (Taube et al. 1990; Sargolini et al. 2006): the mean resultant
    length of each unit's occupancy-normalised directional tuning curve,

        R = |sum_k r_k exp(i theta_k)| / sum_k r_k   over visited direction bins k,

    and the preferred direction arg(sum_k r_k exp(i theta_k)). heading [samples] radians,
    activity [samples, units]. Rates must be non-negative: ``signed="rectify"`` clamps at 0,
    ``"shift"`` subtracts each curve's minimum.
    """
    if heading.ndim != 1 or activity.ndim != 2 or activity.shape[0] != heading.shape[0]:
        raise ValueError(
            f"expected heading [samples] and activity [samples, units], got "
            f"{tuple(heading.shape)} and {tuple(activity.shape)}"
        )
    wrapped = heading.double().remainder(2 * torch.pi)
    index = (wrapped / (2 * torch.pi) * bins).floor().long().clamp(0, bins - 1)
    tuning, _ = node_rate_maps(index, activity, bins)
    rates = non_negative_rates(tuning, signed)
    theta = (
        (torch.arange(bins, device=heading.device, dtype=torch.float64) + 0.5) * 2 * torch.pi / bins
    )
    vector = torch.complex(rates @ torch.cos(theta), rates @ torch.sin(theta))
    total = rates.sum(1)
    mrl = torch.where(total > 0, vector.abs() / total.clamp(min=1e-300), 0.0)
    return HeadDirection(mrl, vector.angle(), tuning)
