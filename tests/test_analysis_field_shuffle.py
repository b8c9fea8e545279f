import math

import pytest
import torch
from test_analysis_gridness import lattice

from analysis import field_shuffle
from analysis.field_shuffle import field_shuffle_null, shuffle_fields
from analysis.fields import place_fields
from analysis.gridness import grid_scores
from analysis.stats import summarise_null

N = 20


def bumps(n_maps, generator, margin=3, tails=False):
    """Maps of 4-8 Gaussian fields (centres at least ``margin`` bins from the walls) on a
    faint noise background; ``tails=False`` cuts the fields off below 20% of the peak."""
    x = torch.arange(N, dtype=torch.float64)
    maps = []
    for _ in range(n_maps):
        k = int(torch.randint(4, 9, (1,), generator=generator))
        centres = margin + torch.rand(k, 2, generator=generator, dtype=torch.float64) * (
            N - 1 - 2 * margin
        )
        widths = 1 + torch.rand(k, generator=generator, dtype=torch.float64)
        fields = sum(
            torch.exp(-((x[:, None] - cx) ** 2 + (x[None, :] - cy) ** 2) / (2 * w**2))
            for (cx, cy), w in zip(centres, widths, strict=True)
        )
        noise = 0.05 * torch.rand(N, N, generator=generator, dtype=torch.float64)
        maps.append(
            fields + noise if tails else torch.where(fields >= 0.2 * fields.max(), fields, noise)
        )
    return torch.stack(maps)


def field_values(rate_map, threshold=0.2):
    """The sorted values of each field (as place_fields finds them), in a fixed order."""
    labels = place_fields(rate_map[None], threshold, min_bins=1).labels[0]
    fields = [rate_map[labels == k].sort().values for k in range(1, int(labels.max()) + 1)]
    return sorted(tuple(f.tolist()) for f in fields)


def test_shuffled_maps_keep_values_fields_and_holes():
    g = torch.Generator().manual_seed(0)
    grid = lattice(7, 10).clamp(min=0)
    grid[2:4, 5:9] = torch.nan  # unvisited
    maps = torch.stack([grid, bumps(1, g)[0], torch.zeros(N, N, dtype=torch.float64)])
    shuffled = shuffle_fields(maps, 20, generator=g)
    assert shuffled.shape == (20, 3, N, N)
    moved = 0
    for copy in shuffled:
        for original, new in zip(maps, copy, strict=True):
            assert torch.equal(torch.isnan(new), torch.isnan(original))
            visited = ~torch.isnan(original)
            assert torch.equal(new[visited].sort().values, original[visited].sort().values)
            # The same fields (values and all), found again: none merged, none split.
            assert field_values(new) == field_values(original)
        moved += not torch.equal(torch.nan_to_num(copy[0]), torch.nan_to_num(maps[0]))
    assert moved == 20


def test_a_field_lands_anywhere_with_equal_chance():
    rate_map = torch.full((6, 6), 0.01, dtype=torch.float64)
    rate_map[1:3, 2:4] = 1.0  # one 2 x 2 field: 5 x 5 = 25 places for its corner
    shuffled = shuffle_fields(rate_map[None], 5000, generator=torch.Generator().manual_seed(1))
    corners = torch.stack([torch.nonzero(m[0] == 1.0)[0] for m in shuffled])
    counts = torch.bincount(corners[:, 0] * 6 + corners[:, 1], minlength=36).view(6, 6)
    assert counts[5].sum() == 0 and counts[:, 5].sum() == 0  # would stick out of the map
    expected, sd = 5000 / 25, math.sqrt(5000 / 25 * (1 - 1 / 25))
    assert (counts[:5, :5] - expected).abs().max() < 5 * sd
    # The background is dealt uniformly too: each bin's chance of the first value.
    rate_map = torch.arange(36.0, dtype=torch.float64).view(6, 6) / 1000
    rate_map[0, 0] = 1.0  # one 1-bin field, everything else background
    shuffled = shuffle_fields(rate_map[None], 3500, generator=torch.Generator().manual_seed(2))
    spots = (shuffled[:, 0] == rate_map[0, 1]).flatten(1).double().sum(0)
    field_spots = (shuffled[:, 0] == 1.0).flatten(1).double().sum(0)
    # The field takes each bin 1/36 of the time, the value 0.001 each other bin equally.
    assert (field_spots - 3500 / 36).abs().max() < 5 * math.sqrt(3500 / 36)
    assert (spots - 3500 / 36).abs().max() < 5 * math.sqrt(3500 / 36)


def test_grid_cells_beat_the_field_shuffle_and_field_layouts_do_not():
    g = torch.Generator().manual_seed(3)
    hexes = torch.stack(
        [
            lattice(s, o).clamp(min=0) + 0.3 * torch.rand(N, N, generator=g, dtype=torch.float64)
            for s, o in ((5, 0), (6.5, 13), (8, 27), (7, 45))
        ]
    )
    result = field_shuffle_null(grid_scores, hexes, n_shuffles=100, generator=g)
    assert result.significant.all() and (result.p_values == 1 / 101).all()
    # Maps whose fields were laid out at random (one field shuffle of bump maps) are
    # exchangeable with their own shuffles: significant at the nominal 5%.
    layouts = shuffle_fields(bumps(400, g), 1, generator=g)[0]
    result = field_shuffle_null(grid_scores, layouts, n_shuffles=50, generator=g)
    assert 0.02 <= result.significant.double().mean() <= 0.085  # 5% +- 3 standard errors


def scattered_null(maps, n_shuffles, generator):
    """Grid scores of the maps with all bins permuted (what a null that destroys fields,
    like a time shift, amounts to)."""
    n_bins = maps[0].numel()
    scattered = torch.stack(
        [maps.flatten(1)[:, torch.randperm(n_bins, generator=generator)] for _ in range(n_shuffles)]
    )
    return grid_scores(scattered.view(-1, *maps.shape[1:])).view(n_shuffles, -1)


@pytest.mark.slow
def test_field_shuffle_calls_fewer_clumpy_maps_grid_cells_than_scattering_bins():
    """Smooth fields anywhere in the map (cut by the walls, tails kept): scattering the bins
    calls about 30% of them grid cells, the field shuffle about 12%. Not the nominal 5%:
    fields cut by a wall are moved inside whole, and the tails are dealt out as background,
    so these maps are not quite exchangeable with their shuffles."""
    g = torch.Generator().manual_seed(5)
    maps = bumps(200, g, margin=0, tails=True)
    fields = field_shuffle_null(grid_scores, maps, n_shuffles=100, generator=g)
    scattered = summarise_null(fields.observed, scattered_null(maps, 100, g))
    rate_fields = fields.significant.double().mean()
    assert scattered.significant.double().mean() > max(0.2, 2 * rate_fields)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\[units, bins_x, bins_y\]"):
        shuffle_fields(torch.zeros(4, 4), 2)


def test_jammed_placements_start_over(monkeypatch):
    """Two 3-bin fields in a row of 7: the first one put in the middle leaves no room for
    the second (1 time in 5); such copies start over, and after _RESTARTS jams in a row
    the copy is all NaN."""
    row = torch.tensor([[[1.0, 0.9, 0.8, 0.01, 0.7, 0.6, 0.5]]], dtype=torch.float64)
    shuffled = shuffle_fields(row, 200, generator=torch.Generator().manual_seed(4))
    for copy in shuffled[:, 0, 0].tolist():
        text = " ".join(map(str, copy))
        assert "1.0 0.9 0.8" in text and "0.7 0.6 0.5" in text
    monkeypatch.setattr(field_shuffle, "_RESTARTS", 1)
    copies = shuffle_fields(row, 200, generator=torch.Generator().manual_seed(4))[:, 0, 0]
    jammed = torch.isnan(copies).all(1)
    assert 0 < jammed.sum() < 200 and not torch.isnan(copies[~jammed]).any()


def test_units_whose_fields_cannot_move_have_no_null(monkeypatch):
    """A unit with a jammed copy gets p-value NaN and is never significant; the other unit
    of the same call (one field, always placeable) is tested as usual."""
    monkeypatch.setattr(field_shuffle, "_RESTARTS", 1)
    maps = torch.full((2, 1, 7), 0.01, dtype=torch.float64)
    maps[0, 0, :3] = 1.0
    maps[1, 0] = torch.tensor([1.0, 0.9, 0.8, 0.01, 0.7, 0.6, 0.5])
    null = field_shuffle_null(
        lambda m: torch.nan_to_num(m, nan=0.0).amax((1, 2)) + m[:, 0, 1],
        maps,
        n_shuffles=99,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isnan(null.p_values[1]) and not null.significant[1]
    assert 0 < null.p_values[0] <= 1
