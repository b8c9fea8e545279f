import math

import pytest
import scipy.stats
import torch

from analysis.temporal import ramp_scores, scaling, time_fields


def synthetic_time_cells(peaks, widths, samples=20_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(samples, generator=g) * 10
    sigma = torch.tensor(widths) / 2.3548  # FWHM -> standard deviation
    activity = torch.exp(-((t[:, None] - torch.tensor(peaks)) ** 2) / (2 * sigma**2))
    return t, activity


def test_time_fields_recover_peaks_and_widths():
    peaks, widths = [1.0, 3.0, 5.0, 7.5], [0.6, 1.0, 1.6, 2.0]
    t, activity = synthetic_time_cells(peaks, widths)
    flat = torch.ones(len(t), 1)
    fields = time_fields(t, torch.cat([activity, flat], 1), bins=100, extent=(0, 10))
    torch.testing.assert_close(fields.peak_time[:4], torch.tensor(peaks).double(), atol=0.1, rtol=0)
    torch.testing.assert_close(fields.width[:4], torch.tensor(widths).double(), atol=0.15, rtol=0)
    info = fields.information
    assert info[0] > info[1] > info[2] > info[3] > 0 and info[4] == pytest.approx(0, abs=1e-9)


def test_scaling_slope_and_tiling():
    peaks = torch.linspace(0.5, 9.5, 40)
    widths = 0.14 * peaks + 0.3
    t, activity = synthetic_time_cells(peaks.tolist(), widths.tolist(), samples=40_000)
    fields = time_fields(t, activity, bins=200, extent=(0, 10))
    fit = scaling(fields.peak_time, fields.width, extent=(0, 10))
    assert fit.slope.item() == pytest.approx(0.14, abs=0.02)
    assert fit.intercept.item() == pytest.approx(0.3, abs=0.1) and fit.r > 0.95
    assert fit.coverage == 1 and fit.uniformity > 0.99
    clustered = scaling(torch.tensor([0.1, 0.2, 0.3, 9.0]), torch.ones(4), extent=(0, 10))
    assert clustered.coverage == pytest.approx(0.2) and clustered.uniformity < 0.5


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"activity \[samples, units\]"):
        time_fields(torch.zeros(5), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"activity \[samples, units\]"):
        ramp_scores(torch.zeros(5), torch.zeros(4, 2))


def test_ramp_scores_against_scipy_linregress():
    g = torch.Generator().manual_seed(2)
    t = torch.rand(2000, generator=g) * 10
    noise = torch.randn(2000, 3, generator=g)
    rising, falling = 0.5 * t + noise[:, 0], -0.2 * t + noise[:, 1]
    time_cell = torch.exp(-((t - 5) ** 2) / 2) + 0.1 * noise[:, 2]  # field mid-delay
    activity = torch.stack([rising, falling, time_cell, torch.ones_like(t)], 1)
    ramp = ramp_scores(t, activity)
    for u in range(3):
        fit = scipy.stats.linregress(t.double().numpy(), activity[:, u].double().numpy())
        assert ramp.r[u].item() == pytest.approx(fit.rvalue, abs=1e-12)
        assert ramp.slope[u].item() == pytest.approx(fit.slope, rel=1e-10)
        assert ramp.t_value[u].item() == pytest.approx(fit.slope / fit.stderr, rel=1e-8)
    # Analytic r of a line plus unit noise: slope sd(t) / sqrt(slope^2 var(t) + 1).
    sd_t = 10 / math.sqrt(12)
    assert ramp.r[0].item() == pytest.approx(0.5 * sd_t / math.sqrt(0.25 * sd_t**2 + 1), abs=0.01)
    assert ramp.r[1] < -0.4 and abs(ramp.r[2]) < 0.05
    assert ramp.r[3] == 0 and ramp.t_value[3] == 0  # constant unit
