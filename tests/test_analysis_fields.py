import math

import pytest
import scipy.stats
import torch

from analysis.fields import border_scores, field_skewness, place_fields
from analysis.relational import successor_representation


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


def directed_track(n, forward, backward):
    """Transition matrix of a walk on a track of n states with reflecting ends."""
    transitions = torch.zeros(n, n, dtype=torch.float64)
    states = torch.arange(n)
    transitions[states[:-1], states[1:]] = forward
    transitions[states[1:], states[:-1]] = backward
    transitions[states, states] = 1 - transitions.sum(1)
    return transitions


def test_successor_fields_skew_against_travel():
    """Columns of the successor representation M = (I - gamma T)^-1 are the place fields of
    units coding each state: on a track walked towards higher states they reach back
    (negative skew), walked the other way forward, and a symmetric walk leaves the middle
    field symmetric."""
    n, gamma = 601, 0.9
    fields = {
        name: successor_representation(directed_track(n, f, b), gamma).T[200:401]  # [units, pos]
        for name, (f, b) in {"right": (0.9, 0.0), "left": (0.0, 0.9), "both": (0.45, 0.45)}.items()
    }
    skew = {name: field_skewness(maps) for name, maps in fields.items()}
    assert (skew["right"] < -1.5).all() and (skew["left"] > 1.5).all()
    torch.testing.assert_close(skew["left"], -skew["right"].flip(0))  # mirror images
    assert skew["both"][100].abs() < 1e-10  # the middle state, 300
    # Walking right with stay probability 0.1, M[j - k, j] = M[j, j] q^k for k >= 0 with
    # q = E[gamma^(steps to move on)] = 0.9 gamma / (1 - 0.1 gamma): a geometric field
    # behind j, whose skewness is -(1 + q) / sqrt(q) (cut at the track's start 200+ states
    # back, where q^200 < 1e-10).
    q = 0.9 * gamma / (1 - 0.1 * gamma)
    expected = -(1 + q) / math.sqrt(q)
    torch.testing.assert_close(
        skew["right"], torch.full_like(skew["right"], expected), rtol=1e-5, atol=0
    )


def test_field_skewness_against_scipy_on_integer_maps():
    g = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 6, (5, 12), generator=g).double()
    maps[0, 3] = torch.nan  # unvisited: left out
    skew = field_skewness(maps)
    for rate_map, ours in zip(maps, skew, strict=True):
        counts = torch.nan_to_num(rate_map).long()
        positions = torch.arange(12).repeat_interleave(counts).double().numpy()
        assert ours.item() == pytest.approx(scipy.stats.skew(positions), abs=1e-12)
    signed = maps[1:2] - 3
    assert field_skewness(signed, signed="shift")[0] == pytest.approx(
        field_skewness(maps[1:2] - maps[1].min())[0].item()
    )
    assert torch.isnan(field_skewness(torch.zeros(1, 5))).all()
