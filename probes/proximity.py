"""Proximity error of a spatial probe (Gurnee & Tegmark 2023, "Language models represent
space and time").

For each sample i, the fraction of the set's predictions that lie closer to i's true
position than i's own prediction does:

    prox_i = (1/n) sum_j [ d(true_i, pred_j) < d(true_i, pred_i) ]

(their ``compute_proximity_error_matrix`` / ``proximity_scores``: the mean runs over every
j of the set, i itself included, which never counts because the comparison is strict).
0 is perfect; a probe that predicts noise scores about 0.5. Unlike the absolute error, it
does not grow with the spread of the positions, so it compares probes across
environments of different sizes. Distances here are Euclidean.
"""

from __future__ import annotations

import torch


def proximity_error(true: torch.Tensor, pred: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """prox_i [n] for true and predicted positions [n, k] (or [n] for 1-D positions).
    Memory O(chunk * n); time O(n^2)."""
    if true.shape != pred.shape or true.ndim not in (1, 2):
        raise ValueError(
            f"expected true and predicted positions of equal shape [n, k] or [n], got "
            f"{tuple(true.shape)} and {tuple(pred.shape)}"
        )
    true = true.double().reshape(true.shape[0], -1)
    pred = pred.double().reshape(pred.shape[0], -1)
    own = (true - pred).norm(dim=1)  # [n]
    out = torch.empty(true.shape[0], dtype=torch.float64)
    for start in range(0, true.shape[0], chunk):
        rows = slice(start, start + chunk)
        closer = torch.cdist(true[rows], pred, compute_mode="donot_use_mm_for_euclid_dist")
        out[rows] = (closer < own[rows, None]).double().mean(1)
    return out
