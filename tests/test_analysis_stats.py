import pytest
import torch

from analysis.binning import rate_maps, spatial_information
from analysis.relational import splitter_index
from analysis.stats import group_permutation_null, segment_shuffle_null, shuffle_null
from analysis.temporal import time_fields


def test_place_cells_significant_noise_not():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(4000, 2, generator=g)
    place = torch.exp(-((pos - 0.3) ** 2).sum(1) / (2 * 0.1**2))
    noise = torch.rand(4000, 6, generator=g)
    activity = torch.cat([place[:, None], noise], 1)

    def info(act, pos):
        return spatial_information(*rate_maps(pos, act, bins=8, extent=((0, 1), (0, 1))))

    result = shuffle_null(info, activity, pos, n_shuffles=200, generator=g, max_elements=2**20)
    assert result.null.shape == (200, 7) and result.p_values.shape == (7,)
    assert result.significant[0] and result.p_values[0] == 1 / 201
    assert result.significant[1:].sum() <= 1 and (result.p_values[1:] > 0.01).all()
    assert (result.threshold_99 >= result.threshold_95).all()


def test_shifts_are_circular_and_per_unit():
    activity = torch.arange(10.0)[:, None].repeat(1, 3)
    seen = []
    shuffle_null(lambda a: seen.append(a.clone()) or a[0], activity, n_shuffles=4, min_shift=2)
    shifted = seen[1]  # [samples, 4 * 3]
    assert shifted.shape == (10, 12)
    assert torch.equal(shifted.sort(0).values, activity.repeat(1, 4))  # a permutation
    first = shifted[0]
    assert ((first >= 2) & (first <= 8)).all()


def test_shuffle_null_equals_a_per_shuffle_loop_of_rolls():
    """The batched windows reproduce np.roll-style shifts drawn as they always were
    (integer activity and weights: every sum is exact, so the nulls must be equal)."""
    g = torch.Generator().manual_seed(3)
    activity = torch.randint(0, 50, (300, 5), generator=g).double()
    weight = torch.randint(-3, 4, (300, 1), generator=g).double()

    def metric(act):
        return (act * weight).sum(0)

    result = shuffle_null(
        metric, activity, n_shuffles=40, generator=torch.Generator().manual_seed(4)
    )
    shifts = torch.randint(15, 300 - 15 + 1, (40, 5), generator=torch.Generator().manual_seed(4))
    expected = torch.stack(
        [
            torch.stack(
                [metric(activity[:, u : u + 1].roll(int(k), 0))[0] for u, k in enumerate(row)]
            )
            for row in shifts
        ]
    )
    assert torch.equal(result.null, expected)


def place_information(act, pos):
    return spatial_information(*rate_maps(pos, act, bins=8, extent=((0, 1), (0, 1))))


def test_noise_units_are_significant_at_the_nominal_rate():
    g = torch.Generator().manual_seed(5)
    pos = torch.rand(2000, 2, generator=g)
    noise = torch.rand(2000, 300, generator=g)
    result = shuffle_null(place_information, noise, pos, n_shuffles=200, generator=g)
    assert 0.02 <= result.significant.double().mean() <= 0.08  # 5% +- 3 standard errors


def trials(n_trials=60, length=20, noise_units=300, seed=6):
    """Concatenated trials of equal length: a time cell firing 6 steps after the cue, and
    noise units."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length).repeat(n_trials).double()
    time_cell = torch.exp(-((t - 6) ** 2) / 2) + 0.3 * torch.rand(len(t), generator=g)
    activity = torch.cat([time_cell[:, None], torch.rand(len(t), noise_units, generator=g)], 1)
    return t, torch.arange(n_trials).repeat_interleave(length), activity


def temporal_information(act, t):
    return time_fields(t, act, bins=20, extent=(0, 20)).information


def test_within_segment_shifts_find_time_cells_that_global_shifts_miss():
    t, trial, activity = trials()
    global_null = shuffle_null(
        temporal_information, activity[:, :1], t, n_shuffles=100, generator=torch.Generator()
    )
    # A global shift of equal-length trials only rotates the tuning curve: information is
    # unchanged, the null sits on the observed value.
    assert not global_null.significant[0] and global_null.p_values[0] > 0.5
    result = segment_shuffle_null(
        temporal_information,
        activity,
        trial,
        t,
        n_shuffles=200,
        generator=torch.Generator().manual_seed(7),
    )
    assert result.significant[0] and result.p_values[0] == 1 / 201
    assert 0.02 <= result.significant[1:].double().mean() <= 0.08


def test_segment_shifts_rotate_each_segment_by_its_own_shift():
    segment = torch.tensor([0] * 6 + [1] * 9 + [2] * 6)
    activity = torch.arange(21.0)[:, None].repeat(1, 2)
    seen = []
    segment_shuffle_null(
        lambda a: seen.append(a.clone()) or a[0], activity, segment, n_shuffles=30, min_shift=1
    )
    shifted = seen[1]  # [samples, 30 * 2]
    shifts = set()
    for rows in (slice(0, 6), slice(6, 15), slice(15, 21)):
        original, block = activity[rows, 0], shifted[rows]
        n = len(original)
        for column in block.T:
            k = int((column[0] - original[0]) % n)
            k = (n - k) % n  # column = original rolled by k
            assert torch.equal(column, original.roll(k)) and 1 <= k <= n - 1
            shifts.add((rows.start, k))
    assert len(shifts) > 10  # segments and units draw their own shifts


def test_segments_need_not_be_contiguous():
    """Trials interleaved sample by sample (each still in time order) get the same null."""
    t, trial, activity = trials(n_trials=20, noise_units=4)
    shuffled_trials = torch.randperm(20, generator=torch.Generator().manual_seed(8))
    order = torch.argsort(t * 20 + shuffled_trials[trial])
    runs = [
        segment_shuffle_null(
            temporal_information,
            activity[o],
            trial[o],
            t[o],
            n_shuffles=30,
            generator=torch.Generator().manual_seed(9),
        )
        for o in (torch.arange(len(t)), order)
    ]
    torch.testing.assert_close(runs[0].null, runs[1].null)


def test_group_permutation_keeps_laps_whole():
    """Units whose activity differs from lap to lap (not by route) look like splitter cells
    when routes are permuted sample by sample, not when whole laps are permuted."""
    g = torch.Generator().manual_seed(10)
    n_laps, n_positions, dwell = 40, 10, 3
    lap = torch.arange(n_laps).repeat_interleave(n_positions * dwell)
    position = torch.arange(n_positions).repeat_interleave(dwell).repeat(n_laps)
    route = (torch.rand(n_laps, generator=g) < 0.5).long()[lap]
    offsets = 2 + torch.randn(n_laps, 300, generator=g)  # one offset per lap and unit
    drifting = offsets[lap] + 0.1 * torch.randn(len(lap), 300, generator=g)
    splitter = (1 + route).double()[:, None] + 0.1 * torch.randn(len(lap), 1, generator=g)
    activity = torch.cat([splitter, drifting], 1)

    def metric(labels):
        return splitter_index(activity, position, labels, n_positions)

    by_lap = group_permutation_null(metric, route, lap, n_shuffles=200, generator=g)
    assert by_lap.significant[0] and by_lap.p_values[0] == 1 / 201
    assert 0.02 <= by_lap.significant[1:].double().mean() <= 0.08
    by_sample = group_permutation_null(
        metric, route, torch.arange(len(lap)), n_shuffles=200, generator=g
    )
    assert by_sample.significant[1:].double().mean() > 0.3


def test_bad_inputs_are_named():
    activity = torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"segment must be \[samples=10\]"):
        segment_shuffle_null(lambda a: a[0], activity, torch.zeros(9))
    with pytest.raises(ValueError, match="shortest segment // 2 = 2"):
        segment_shuffle_null(lambda a: a[0], activity, torch.arange(10) // 5, min_shift=3)
    with pytest.raises(ValueError, match="labels vary within groups"):
        group_permutation_null(lambda r: r[:1], torch.arange(4) % 2, torch.zeros(4))
