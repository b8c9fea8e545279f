import pytest
import torch

from analysis.binning import rate_maps, spatial_information
from analysis.field_shuffle import shuffle_fields
from analysis.fields import field_skewness
from analysis.gridness import autocorrelogram, grid_scores
from analysis.relational import linear_cka, successor_representation
from analysis.stats import segment_shuffle_null, shuffle_null
from analysis.temporal import ramp_scores, time_fields


@pytest.mark.gpu
def test_same_results_on_cpu_and_cuda():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(5000, 2, generator=g)
    activity = torch.rand(5000, 8, generator=g)
    maps = torch.rand(4, 16, 16, generator=g, dtype=torch.float64)
    maps[0, 2:5, 3:6] = torch.nan
    t = torch.rand(5000, generator=g)
    extent = ((0, 1), (0, 1))

    def run(device):
        p, a = pos.to(device), activity.to(device)
        rm, occ = rate_maps(p, a, 10, extent, smooth_sigma=1.0)
        null = shuffle_null(
            lambda x: spatial_information(*rate_maps(p, x, 10, extent)),
            a,
            n_shuffles=20,
            generator=torch.Generator().manual_seed(1),
        )
        return [
            rm,
            spatial_information(rm, occ),
            grid_scores(maps.to(device)),
            grid_scores(maps.to(device), nan_mode="exclude", variant="minmax"),
            time_fields(t.to(device), a, bins=20).width,
            successor_representation(
                torch.eye(5, dtype=torch.float64, device=device).roll(1, 1), 0.9
            ),
            linear_cka(a, a[:, :4]),
            null.null,
            autocorrelogram(maps.to(device), nan_mode="exclude"),
            segment_shuffle_null(
                lambda x: x.mean(0),
                a,
                torch.arange(5000, device=device) // 100,
                n_shuffles=5,
                generator=torch.Generator().manual_seed(2),
            ).null,
            shuffle_fields(maps.to(device), 3, generator=torch.Generator().manual_seed(3)),
            ramp_scores(t.to(device), a).t_value,
            field_skewness(a[:20].T),
        ]

    for cpu, cuda in zip(run("cpu"), run("cuda"), strict=True):
        torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-5, rtol=1e-5, equal_nan=True)
