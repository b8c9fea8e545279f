import pytest
import torch

from probes.labels import control_task, encode
from tasks.targets import ProbeTarget

CLASSES = ProbeTarget("node", kind="classification", n_classes=3)


def test_categorical_control_is_a_fixed_map_drawn_from_the_label_distribution():
    counts = torch.tensor([700, 200, 100])
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    control = control_task(CLASSES, labels, counts, seed=3)
    mapped = control(labels)
    assert torch.equal(mapped, control.table[labels])  # a function of the class
    assert torch.equal(control(labels), mapped)  # fixed: the same every call
    assert torch.equal(control_task(CLASSES, labels, counts, seed=3).table, control.table)
    # over many draws, each class goes to class j with the label frequency of j
    drawn = torch.stack([control_task(CLASSES, labels, counts, seed=s).table for s in range(3000)])
    frequency = torch.stack([(drawn == j).double().mean() for j in range(3)])
    torch.testing.assert_close(frequency, counts / counts.sum().double(), atol=0.02, rtol=0)


def test_control_of_grid_positions_maps_each_position_to_a_real_position():
    g = torch.Generator().manual_seed(0)
    grid = torch.cartesian_prod(torch.arange(5.0), torch.arange(4.0))  # 20 positions
    weights = torch.linspace(1, 3, 20)
    sample = grid[torch.multinomial(weights, 2000, True, generator=g)]
    target = ProbeTarget("pos_xy", spatial=True)
    control = control_task(target, sample, seed=1)
    assert len(control.cells) == 20  # each distinct position is its own cell
    mapped = control(grid)
    assert mapped.shape == grid.shape and mapped.dtype == torch.float64
    assert all((row == grid.double()).all(1).any() for row in mapped)  # output space kept
    # a function of the position: repeated positions get the same control position
    twice = control(torch.cat([grid, grid]))
    torch.testing.assert_close(twice[:20], twice[20:])
    # drawn with the positions' own frequencies (in expectation over draws)
    hits = torch.zeros(20, dtype=torch.float64)
    for seed in range(200):
        table = control_task(target, sample, seed=seed)(grid)
        hits += (table[:, None, :] == grid.double()[None]).all(2).double().sum(0)
    empirical = torch.tensor([(sample == p).all(1).double().mean() for p in grid])
    torch.testing.assert_close(hits / hits.sum(), empirical, atol=0.012, rtol=0)


def test_control_of_a_continuous_value_uses_quantile_bins_and_their_centroids():
    g = torch.Generator().manual_seed(0)
    sample = torch.rand(5000, generator=g) ** 2  # skewed: quantile bins are not uniform
    target = ProbeTarget("t")
    control = control_task(target, sample, n_bins=10, seed=0)
    assert len(control.cells) == 10
    edges = control.edges[0]
    torch.testing.assert_close(
        edges, torch.quantile(sample.double(), torch.arange(1, 10).double() / 10)
    )
    bins = torch.searchsorted(edges, sample.double())
    centroids = torch.stack([sample[bins == b].double().mean() for b in range(10)])
    mapped = control(sample)
    assert set(mapped.unique().tolist()) <= set(centroids.tolist())
    # values within a bin share their control value
    assert all(mapped[bins == b].unique().numel() == 1 for b in range(10))
    # structure destroyed: no correlation with the real value on average over draws
    corr = [
        torch.corrcoef(
            torch.stack([sample.double(), control_task(target, sample, seed=s)(sample)])
        )[0, 1]
        for s in range(100)
    ]
    assert abs(torch.stack(corr).nan_to_num().mean()) < 0.08


def test_circular_control_values_are_circular_means_of_their_bins():
    target = ProbeTarget("heading", kind="circular", period=360.0)
    sample = torch.tensor([350.0, 355.0, 5.0, 10.0, 370.0])  # 370 wraps to 10
    control = control_task(target, sample, n_bins=4, seed=0)
    assert len(control.cells) == 4  # distinct wrapped values: 5, 10, 350, 355
    seen = torch.tensor([5.0, 10.0, 350.0, 355.0], dtype=torch.float64)
    assert ((control(sample)[:, None] - seen).abs().min(1).values < 1e-9).all()
    # two quantile bins, {10, 20} and {100, 350}: circular means 15 and 45 (not 225)
    sample = torch.tensor([10.0, 20.0, 100.0, 350.0])
    values = {
        v
        for s in range(20)
        for v in control_task(target, sample, n_bins=2, seed=s).table[:, 0].tolist()
    }
    assert sorted(values) == pytest.approx([15.0, 45.0])
    encoded = encode(target, torch.tensor([0.0, 90.0]))
    torch.testing.assert_close(encoded, torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))


def test_values_never_seen_when_drawing_map_to_a_fixed_seen_value():
    target = ProbeTarget("pos_xy")
    sample = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    control = control_task(target, sample, seed=0)
    unseen = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # a cell of two seen bins, never seen
    mapped = control(unseen)
    assert torch.equal(mapped[0], mapped[1])
    assert (mapped[0] == control.table).all(1).any()


def test_errors():
    with pytest.raises(ValueError, match="needs the class counts"):
        control_task(CLASSES, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no labels of 't'"):
        control_task(ProbeTarget("t"), torch.empty(0))
    with pytest.raises(ValueError, match="labels outside 0..2"):
        encode(CLASSES, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected angles"):
        encode(ProbeTarget("a", kind="circular"), torch.zeros(3, 2))
