"""Image rotation by cubic B-spline interpolation as a fixed linear operator, in torch.

Reproduces ``scipy.ndimage.rotate(image, angle, reshape=False)`` with its defaults (order 3,
mode "constant", cval 0, prefilter on) to ~1e-13, without scipy at run time:

* prefilter: the cubic B-spline coefficients ``C = P @ image @ P.T`` with ``P`` the exact
  inverse of the B-spline sampling matrix under mirror boundaries (``c[-k] = c[k]``), which
  is what scipy's recursive filter computes for mode "constant";
* interpolation: output pixel ``o`` reads the spline at ``R(o - centre) + centre`` with
  ``R = [[cos, sin], [-sin, cos]]`` and ``centre = (n - 1) / 2`` (scipy's convention), from
  the 4 x 4 coefficients around it, mirror-folded at the edges; points outside
  ``[0, n - 1]^2`` read 0.
"""

from __future__ import annotations

import math

import torch


def prefilter_matrix(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """[n, n] matrix mapping samples to cubic B-spline coefficients (mirror boundary)."""
    rows = torch.arange(n, device=device)
    sampling = torch.zeros(n, n, dtype=dtype, device=device)
    for offset, weight in ((-1, 1 / 6), (0, 4 / 6), (1, 1 / 6)):
        sampling.index_put_(
            (rows, _mirror(rows + offset, n)),
            torch.full_like(rows, weight, dtype=dtype),
            accumulate=True,
        )
    return torch.linalg.inv(sampling)


def _mirror(index: torch.Tensor, n: int) -> torch.Tensor:
    """Fold integer indices into [0, n) by whole-sample mirroring (..., 2, 1, 0, 1, 2, ...)."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.remainder(period)
    return torch.where(index > n - 1, period - index, index)


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    return torch.where(
        t < 1, 2 / 3 - t**2 + t**3 / 2, torch.where(t < 2, (2 - t) ** 3 / 6, torch.zeros_like(t))
    )


def _cos_sin_degrees(angle: float) -> tuple[float, float]:
    """cos and sin of an angle in degrees, exact at multiples of 90 (like scipy.special.cosdg)."""
    if angle % 90 == 0:
        quarter = int(angle // 90) % 4
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[quarter]
    return math.cos(math.radians(angle)), math.sin(math.radians(angle))


def rotation_taps(
    n: int, angle: float, pixels: torch.Tensor, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spline taps of a rotated n x n image at the flat output ``pixels`` [k].

    Returns (index [k, 16] flat coefficient indices, weight [k, 16]): the rotated image at
    pixel ``pixels[i]`` is ``(weight[i] * coefficients.flatten()[index[i]]).sum()``.
    """
    cos, sin = _cos_sin_degrees(angle)
    centre = (n - 1) / 2
    out_row = (pixels // n).to(dtype) - centre
    out_col = (pixels % n).to(dtype) - centre
    in_row = cos * out_row + sin * out_col + centre  # [k]
    in_col = -sin * out_row + cos * out_col + centre
    inside = (in_row >= 0) & (in_row <= n - 1) & (in_col >= 0) & (in_col <= n - 1)
    offsets = torch.arange(-1, 3, device=pixels.device)
    tap_row = in_row.floor().long()[:, None] + offsets  # [k, 4]
    tap_col = in_col.floor().long()[:, None] + offsets
    weight_row = _cubic_bspline(in_row[:, None] - tap_row)
    weight_col = _cubic_bspline(in_col[:, None] - tap_col)
    index = _mirror(tap_row, n)[:, :, None] * n + _mirror(tap_col, n)[:, None, :]  # [k, 4, 4]
    weight = weight_row[:, :, None] * weight_col[:, None, :] * inside[:, None, None]
    return index.reshape(-1, 16), weight.reshape(-1, 16)
