import math

import numpy as np
import pytest
import torch
from analysis_reference import rate_map

import analysis.binning as binning
from analysis.binning import node_rate_maps, rate_maps, spatial_information, variance_explained
from lab.native import build_error


def gaussian_cell(pos, centre, width):
    return torch.exp(-((pos - torch.tensor(centre)) ** 2).sum(1) / (2 * width**2))


def test_rate_map_recovers_a_place_field_and_normalises_occupancy():
    g = torch.Generator().manual_seed(0)
    # Oversample the left half five-fold: occupancy must not leak into the rates.
    left = torch.rand(50_000, 2, generator=g) * torch.tensor([0.5, 1.0])
    pos = torch.cat([left, torch.rand(10_000, 2, generator=g)])
    activity = torch.stack([gaussian_cell(pos, (0.7, 0.3), 0.1), torch.ones(len(pos))], 1)
    maps, occupancy = rate_maps(pos, activity, bins=20, extent=((0, 1), (0, 1)))
    assert maps.shape == (2, 20, 20) and occupancy.shape == (20, 20)
    peak = torch.nonzero(maps[0] == maps[0].max())[0]
    centre = (peak.float() + 0.5) / 20
    assert torch.allclose(centre, torch.tensor([0.7, 0.3]), atol=0.05)
    torch.testing.assert_close(maps[1], torch.ones(20, 20))  # uniform stays uniform
    assert occupancy[:10].mean() > 4 * occupancy[10:].mean()
    x = (torch.arange(20) + 0.5) / 20
    expected = torch.exp(-((x[:, None] - 0.7) ** 2 + (x[None, :] - 0.3) ** 2) / (2 * 0.1**2))
    assert torch.corrcoef(torch.stack([maps[0].flatten(), expected.flatten()]))[0, 1] > 0.99


def test_unvisited_bins_are_nan_and_smoothing_keeps_them_out():
    pos = torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.9, 0.9]])
    activity = torch.tensor([[1.0], [3.0], [5.0]])
    maps, occupancy = rate_maps(pos, activity, bins=2, extent=((0, 1), (0, 1)))
    assert maps[0, 0, 0] == 2.0 and maps[0, 1, 1] == 5.0
    assert torch.isnan(maps[0, 0, 1]) and torch.isnan(occupancy[1, 0])
    smooth, _ = rate_maps(pos, activity, bins=2, extent=((0, 1), (0, 1)), smooth_sigma=1.0)
    assert torch.isnan(smooth[0, 0, 1])
    # Constant activity stays exactly constant under smoothing despite the holes.
    flat, _ = rate_maps(pos, torch.ones(3, 1), bins=2, extent=((0, 1), (0, 1)), smooth_sigma=1.0)
    torch.testing.assert_close(flat[0, 0, 0], torch.tensor(1.0))


@pytest.mark.parametrize("path", ["native", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rate_maps_match_per_unit_numpy_histograms(dtype, path, monkeypatch):
    """The per-chunk sums (the C++ kernel, and the sparse product used where it cannot be
    built) against np.histogram2d and np.bincount, one unit at a time: more samples than
    one chunk (2^17), bins never visited, signed activity, a non-square grid and an extent
    that is not the unit square."""
    if path == "native" and build_error(*binning._NATIVE) is not None:
        pytest.skip(f"the binning kernel cannot be built here: {build_error(*binning._NATIVE)}")
    if path == "sparse":
        monkeypatch.setattr(binning, "_native_sums", lambda *args: None)
    g = torch.Generator().manual_seed(3)
    samples = 2 * 2**17 + 123
    pos = torch.rand(samples, 2, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.5])
    pos[:, 0] = pos[:, 0].where(pos[:, 0] > 0.5, 0.1)  # x in (0.25, 0.5] never visited
    activity = (torch.randn(samples, 5, generator=g, dtype=torch.float64) * 10).to(dtype)
    extent = ((0.0, 2.0), (0.0, 0.5))
    maps, occupancy = rate_maps(pos, activity, bins=(16, 10), extent=extent)
    assert maps.dtype == dtype
    # float32 chunk sums: round-off of about 1e-7 of the summed magnitudes (|activity| ~ 10).
    tolerance = {"rtol": 1e-12, "atol": 0} if dtype == torch.float64 else {"atol": 1e-5}
    for unit in range(5):
        column = activity[:, unit].double().numpy()
        expected = rate_map(pos.numpy(), column, (16, 10), extent)
        np.testing.assert_allclose(maps[unit].double().numpy(), expected, **tolerance)
    assert torch.isnan(maps[:, 2:4]).all() and torch.isnan(occupancy[2:4]).all()
    counts, _, _ = np.histogram2d(pos[:, 0].numpy(), pos[:, 1].numpy(), (16, 10), extent)
    np.testing.assert_array_equal(np.nan_to_num(occupancy.numpy()), counts)
    node = torch.randint(0, 7, (samples,), generator=g)
    node[node == 3] = 4  # node 3 never visited
    node_maps, _ = node_rate_maps(node, activity, 7)
    for unit in range(5):
        column = activity[:, unit].double().numpy()
        with np.errstate(invalid="ignore"):
            expected = np.bincount(node, column, 7) / np.bincount(node, minlength=7)
        np.testing.assert_allclose(node_maps[unit].double().numpy(), expected, **tolerance)


def test_node_rate_maps():
    node = torch.tensor([0, 0, 2, 2, 2])
    activity = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    maps, occupancy = node_rate_maps(node, activity, n_nodes=3)
    torch.testing.assert_close(maps[:, [0, 2]], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert torch.isnan(maps[:, 1]).all() and occupancy[2] == 3


def test_spatial_information_ground_truth():
    occupancy = torch.ones(4, 4)
    one_bin = torch.zeros(4, 4)
    one_bin[1, 2] = 1.0
    broad = torch.zeros(4, 4)
    broad[:2] = 1.0
    uniform = torch.full((4, 4), 0.3)
    info = spatial_information(torch.stack([one_bin, broad, uniform]), occupancy)
    torch.testing.assert_close(info, torch.tensor([math.log2(16), math.log2(2), 0.0]))
    signed = torch.stack([one_bin * 2 - 1])  # -1 everywhere but one bin
    assert spatial_information(signed, occupancy, signed="rectify")[0] == pytest.approx(4.0)
    assert spatial_information(signed, occupancy, signed="shift")[0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="negative rates"):
        spatial_information(signed, occupancy, signed="error")


def test_sharp_field_carries_more_information_than_broad_one():
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(40_000, 2, generator=g)
    activity = torch.stack(
        [gaussian_cell(pos, (0.5, 0.5), w) for w in (0.05, 0.15, 0.4)] + [torch.ones(len(pos))], 1
    )
    maps, occupancy = rate_maps(pos, activity, bins=16, extent=((0, 1), (0, 1)))
    info = spatial_information(maps, occupancy)
    assert info[0] > info[1] > info[2] > 0
    assert info[3] == pytest.approx(0.0, abs=1e-6)


def test_node_indices_out_of_range_are_named():
    with pytest.raises(ValueError, match=r"node indices must lie in \[0, 3\), got 0 to 3"):
        node_rate_maps(torch.tensor([0, 3]), torch.zeros(2, 1), n_nodes=3)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"pos_xy must be \[samples, 2\]"):
        rate_maps(torch.zeros(5, 3), torch.zeros(5, 1), bins=4)
    with pytest.raises(ValueError, match=r"activity must be \[samples=5, units\]"):
        rate_maps(torch.zeros(5, 2), torch.zeros(4, 1), bins=4)


def test_variance_explained_by_position():
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(20_000, 2, generator=g)
    field = gaussian_cell(pos, (0.3, 0.6), 0.2)
    noise = torch.randn(len(pos), generator=g)
    activity = torch.stack([field, field + noise, noise, -field], 1)
    maps, occupancy = rate_maps(pos, activity, bins=10, extent=((0, 1), (0, 1)))
    eta2 = variance_explained(maps, occupancy, activity.var(0, unbiased=False))
    # Pure function of position (up to within-bin spread): near 1, sign does not matter.
    assert eta2[0] > 0.9 and eta2[3].item() == pytest.approx(eta2[0].item(), rel=1e-5)
    expected = field.var() / (field.var() + 1.0)  # signal share of the noisy unit
    assert eta2[1].item() == pytest.approx((expected * eta2[0]).item(), abs=0.02)
    assert eta2[2] < 0.01  # 100 bins of pure noise: about 99 / 20000
