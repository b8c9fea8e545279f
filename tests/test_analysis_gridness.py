import math

import numpy as np
import pytest
import torch
from analysis_reference import autocorrelogram as ref_autocorrelogram
from analysis_reference import autocorrelogram_loop
from analysis_reference import grid_score as ref_grid_score

from analysis.gridness import autocorrelogram, grid_scores

N = 20


def lattice(scale, orientation_deg, folds=6, n=N):
    """Sum of plane waves: hexagonal (3 waves, 60 deg apart) or square (2, 90 deg) grid."""
    x = torch.arange(n, dtype=torch.float64)
    gx, gy = torch.meshgrid(x, x, indexing="ij")
    step = 60 if folds == 6 else 90
    k = 4 * math.pi / (math.sqrt(3) * scale) if folds == 6 else 2 * math.pi / scale
    waves = []
    for j in range(3 if folds == 6 else 2):
        theta = math.radians(orientation_deg + j * step)
        waves.append(torch.cos(k * (math.cos(theta) * gx + math.sin(theta) * gy)))
    return sum(waves)


@pytest.fixture(scope="module")
def maps():
    g = torch.Generator().manual_seed(0)
    hexes = [lattice(s, o) for s, o in ((5, 0), (6.5, 13), (8, 27), (7, 45))]
    squares = [lattice(s, o, folds=4) for s, o in ((6, 0), (7, 20))]
    noise = [torch.rand(N, N, generator=g, dtype=torch.float64) for _ in range(2)]
    return torch.stack(hexes + squares + noise)


def test_hexagonal_square_and_noise_maps(maps):
    result = grid_scores(maps, details=True)
    assert (result.score_60[:4] > 1.0).all()
    assert (result.score_60[4:6] < 0.2).all() and (result.score_90[4:6] > 1.0).all()
    assert (result.score_60[6:].abs() < 0.5).all()
    # Scale and orientation of the hexagonal grids are recovered (the fields of three plane
    # waves at theta + 0/60/120 deg lie along theta + 30 deg).
    torch.testing.assert_close(
        result.scale[:4], torch.tensor([5, 6.5, 8, 7.0]).double(), atol=0.6, rtol=0
    )
    orientation_error = (
        result.orientation[:4] - torch.tensor([30, 43, 57, 75.0]).double() + 30
    ) % 60 - 30
    assert orientation_error.abs().max() < 6


@pytest.mark.parametrize("variant", ["mean", "minmax"])
def test_agrees_with_per_map_scipy_reference(maps, variant):
    g = torch.Generator().manual_seed(1)
    noisy = maps + 0.3 * torch.randn(maps.shape, generator=g, dtype=torch.float64)
    noisy[1, 3:7, 5:9] = torch.nan  # unvisited bins count as 0, like DeepMind
    result = grid_scores(noisy, variant=variant, details=True)
    expected = np.array([ref_grid_score(m, variant) for m in noisy.numpy()])
    np.testing.assert_allclose(result.score_60.numpy(), expected[:, 0], atol=1e-10, rtol=0)
    np.testing.assert_allclose(result.score_90.numpy(), expected[:, 1], atol=1e-10, rtol=0)
    sac = autocorrelogram(noisy[:2])
    np.testing.assert_allclose(sac[1].numpy(), ref_autocorrelogram(noisy[1].numpy()), atol=1e-12)


@pytest.fixture(scope="module")
def wide_range_maps():
    """Maps whose values span 20 to 100 orders of magnitude: Gaussian place fields (their
    tails) at off-grid centres, and a hexagonal grid of narrow bumps."""
    rng = np.random.default_rng(0)
    x = torch.arange(N, dtype=torch.float64)
    fields = []
    for width in (0.8, 1.0, 1.3, 1.6, 2.0):
        cx, cy = rng.uniform(3, N - 3, 2)
        fields.append(
            torch.exp(-((x[:, None] - cx) ** 2 + (x[None, :] - cy) ** 2) / (2 * width**2))
        )
    fields.append(torch.exp(12 * (lattice(7, 10) - 3)))  # lattice peaks at 3
    maps = torch.stack(fields)
    assert (maps.amax((1, 2)) / maps.amin((1, 2)) > 1e20).all()
    return maps


def test_autocorrelogram_is_exact_on_a_wide_dynamic_range(wide_range_maps):
    """Every lag agrees with DeepMind's definition summed lag by lag, also on the lags whose
    overlap holds only a field's far tails (an FFT gets those wrong by up to 1)."""
    for rate_map in wide_range_maps:
        np.testing.assert_allclose(
            autocorrelogram(rate_map[None])[0].numpy(),
            autocorrelogram_loop(rate_map.numpy()),
            atol=1e-12,
            rtol=0,
        )
    holed = wide_range_maps[[0, 5]].clone()
    holed[:, 2:5, 6:11] = torch.nan
    holed[:, 15:, :3] = torch.nan
    for mode in ("zero", "exclude"):
        sac = autocorrelogram(holed, nan_mode=mode)
        for ours, rate_map in zip(sac, holed, strict=True):
            expected = autocorrelogram_loop(rate_map.numpy(), nan_mode=mode)
            np.testing.assert_allclose(ours.numpy(), expected, atol=1e-12, rtol=0)
    rectangle = wide_range_maps[3, 2:14, 1:18]  # n_x != n_y
    np.testing.assert_allclose(
        autocorrelogram(rectangle[None])[0].numpy(),
        autocorrelogram_loop(rectangle.numpy()),
        atol=1e-12,
        rtol=0,
    )


@pytest.mark.parametrize("variant", ["mean", "minmax"])
def test_grid_scores_agree_on_a_wide_dynamic_range(wide_range_maps, variant):
    result = grid_scores(wide_range_maps, variant=variant, details=True)
    expected = np.array([ref_grid_score(m, variant) for m in wide_range_maps.numpy()])
    np.testing.assert_allclose(result.score_60.numpy(), expected[:, 0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(result.score_90.numpy(), expected[:, 1], atol=1e-9, rtol=0)
    assert result.score_60[-1] > 0.3 > result.score_60[:-1].max()  # the grid of bumps


def test_float32_input_and_holes_do_not_crash_or_bias(maps):
    hexagon = maps[1:2].float().clone()
    full = grid_scores(hexagon, nan_mode="exclude")
    holed = hexagon.clone()
    holed[0, 2:6, 3:8] = torch.nan
    holed[0, 14:, 15:] = torch.nan
    for mode in ("zero", "exclude"):
        score = grid_scores(holed, nan_mode=mode)
        assert score.dtype == torch.float64 and torch.isfinite(score).all()
    assert abs(grid_scores(holed, nan_mode="exclude") - full).item() < 0.2


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\[units, n, n\]"):
        grid_scores(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="variant"):
        grid_scores(torch.zeros(2, 4, 4), variant="max")
