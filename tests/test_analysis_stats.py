import torch

from analysis.binning import rate_maps, spatial_information
from analysis.stats import shuffle_null


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
