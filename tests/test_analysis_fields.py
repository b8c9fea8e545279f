import torch

from analysis.fields import border_scores, place_fields


def bump(centre, width, n=16):
    x = torch.arange(n, dtype=torch.float64)
    return torch.exp(
        -((x[:, None] - centre[0]) ** 2 + (x[None, :] - centre[1]) ** 2) / (2 * width**2)
    )


def test_place_fields_count_sizes_peaks_and_score():
    one = bump((4, 10), 1.5)
    two = bump((3, 3), 1.5) + bump((12, 12), 1.0)
    spread = torch.rand(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    holed = one.clone()
    holed[0, 0] = torch.nan
    fields = place_fields(torch.stack([one, two, spread, holed]), threshold=0.2, min_bins=4)
    assert fields.n_fields[:2].tolist() == [1, 2] and fields.n_fields[3] == 1
    assert fields.peaks[0, 0].tolist() == [4, 10]
    assert sorted(fields.peaks[1, :2].tolist()) == [[3, 3], [12, 12]]
    assert fields.sizes[1, 0] > fields.sizes[1, 1] > 0
    assert (fields.labels[0] > 0).sum() == fields.sizes[0, 0]
    # A Gaussian keeps 1 - 0.2 = 80% of its mass above 20% of its peak.
    assert fields.place_score[0] > 0.75 and 0.4 < fields.place_score[1] < 0.7


def test_border_cell_scores_high_centre_field_low():
    wall = torch.zeros(16, 16, dtype=torch.float64)
    wall[0, :] = 1.0  # a field along the whole x = 0 wall
    wall[1, :] = 0.5
    scores = border_scores(torch.stack([wall, bump((8, 8), 2.0)]))
    assert scores[0] > 0.7 and scores[1] < 0
