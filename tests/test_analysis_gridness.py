import math

import numpy as np
import pytest
import torch
from analysis_reference import autocorrelogram as ref_autocorrelogram
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
    np.testing.assert_allclose(result.score_60.numpy(), expected[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.score_90.numpy(), expected[:, 1], atol=1e-6, rtol=0)
    sac = autocorrelogram(noisy[:2])
    np.testing.assert_allclose(sac[1].numpy(), ref_autocorrelogram(noisy[1].numpy()), atol=1e-9)


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
