"""Ridge-regression probes from streamed sufficient statistics.

Activations never need to sit in memory together: each batch adds to the sums
(n, Σx, Σy, XᵀX, Xᵀy, Σy²) of the cross-validation fold its environment belongs to. A
fit on any union of folds and its exact held-out R² then follow in closed form.

Protocol: environments are split into a test set and K folds. The penalty is chosen by
grouped K-fold cross-validation on the training folds, the probe is refit on all of them,
and R² is reported on the held-out test environments (never seen by the model in training
either: probe batches come from their own random stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ALPHAS = tuple(10.0**k for k in range(-6, 3))
"""Penalties relative to the mean eigenvalue of the centred covariance, trace(XᵀX)/d."""


@dataclass
class RidgeStats:
    """Sufficient statistics of (X [n, d], Y [n, k]) in float64."""

    d: int
    k: int
    n: float = 0.0
    sx: torch.Tensor = field(init=False)
    sy: torch.Tensor = field(init=False)
    xx: torch.Tensor = field(init=False)
    xy: torch.Tensor = field(init=False)
    yy: torch.Tensor = field(init=False)

    def __post_init__(self):
        f64 = torch.float64
        self.sx, self.sy = torch.zeros(self.d, dtype=f64), torch.zeros(self.k, dtype=f64)
        self.xx, self.xy = (
            torch.zeros(self.d, self.d, dtype=f64),
            torch.zeros(self.d, self.k, dtype=f64),
        )
        self.yy = torch.zeros(self.k, dtype=f64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x [n, d], y [n, k]."""
        x, y = x.double(), y.double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += (y * y).sum(0)

    def __add__(self, other: RidgeStats) -> RidgeStats:
        total = RidgeStats(self.d, self.k)
        total.n = self.n + other.n
        for name in ("sx", "sy", "xx", "xy", "yy"):
            setattr(total, name, getattr(self, name) + getattr(other, name))
        return total


def fit(stats: RidgeStats, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge weights W [d, k] and intercept b [k] (the intercept is not penalised)."""
    mx, my = stats.sx / stats.n, stats.sy / stats.n
    xx = stats.xx - stats.n * torch.outer(mx, mx)
    xy = stats.xy - stats.n * torch.outer(mx, my)
    penalty = alpha * xx.diagonal().mean().clamp(min=1e-12)
    w = torch.linalg.solve(xx + penalty * torch.eye(stats.d, dtype=xx.dtype), xy)
    return w, my - mx @ w


def r2(stats: RidgeStats, w: torch.Tensor, b: torch.Tensor) -> float:
    """Pooled R² = 1 - ΣSSE / ΣSST over outputs, of ŷ = xW + b on the data in ``stats``."""
    sse = (
        stats.yy
        - 2 * ((w * stats.xy).sum(0) + b * stats.sy)
        + ((stats.xx @ w) * w).sum(0)
        + 2 * b * (stats.sx @ w)
        + stats.n * b * b
    )
    sst = stats.yy - stats.sy**2 / stats.n
    return float(1 - sse.sum() / sst.sum())


@dataclass
class ProbeResult:
    r2_test: float
    """R² on the held-out test environments."""
    r2_cv: float
    """Mean cross-validated R² of the chosen penalty on the training environments."""
    alpha: float
    n_train: int
    n_test: int


def fold_of(groups: torch.Tensor, folds: int, test_fraction: float) -> torch.Tensor:
    """Fold of each group id: -1 for test, else 0..folds-1 (a fixed hash of the id)."""
    mixed = (groups.long() * 0x9E3779B1 + 0x7F4A7C15) % (2**31 - 1)
    is_test = (mixed % 1000) < int(test_fraction * 1000)
    return torch.where(is_test, -1, (mixed // 1000) % folds)


def cross_validated_ridge(test: RidgeStats, folds: list[RidgeStats]) -> ProbeResult:
    """Choose the penalty by grouped K-fold CV over ``folds``, refit, score on ``test``."""
    train = folds[0]
    for extra in folds[1:]:
        train = train + extra
    scores = []
    for alpha in ALPHAS:
        per_fold = []
        for i, held_out in enumerate(folds):
            rest = [f for j, f in enumerate(folds) if j != i]
            fitted = rest[0]
            for extra in rest[1:]:
                fitted = fitted + extra
            per_fold.append(r2(held_out, *fit(fitted, alpha)))
        scores.append(sum(per_fold) / len(per_fold))
    best = max(range(len(ALPHAS)), key=scores.__getitem__)
    w, b = fit(train, ALPHAS[best])
    return ProbeResult(r2(test, w, b), scores[best], ALPHAS[best], int(train.n), int(test.n))
