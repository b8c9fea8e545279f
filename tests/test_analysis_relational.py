import pytest
import torch

from analysis.relational import (
    linear_cka,
    rdm,
    remapping,
    rsa,
    splitter_index,
    successor_representation,
)


def test_successor_representation_of_directed_track_skews_backwards():
    n, gamma = 20, 0.9
    transitions = torch.zeros(n, n, dtype=torch.float64)
    transitions[torch.arange(n - 1), torch.arange(1, n)] = 0.9  # mostly step right
    transitions[torch.arange(n - 1), torch.arange(n - 1)] = 0.1
    transitions[n - 1, n - 1] = 1.0
    m = successor_representation(transitions, gamma)
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(m, torch.linalg.inv(eye - gamma * transitions))
    field = m[:, 10]  # place field of the unit coding state 10
    assert field[:10].sum() > 5 * field[11:].sum()  # mass before 10: against travel
    assert field[9] > field[11]


def test_linear_cka_rotation_invariant_and_low_for_independent():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, 3 * x @ rotation).item() == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, torch.randn(200, 16, generator=g)) < 0.2


def test_rsa_and_rdm():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 30, generator=g)
    assert rdm(x).shape == (12, 12) and rdm(x).diagonal().abs().max() < 1e-12
    assert rsa(x, 2 * x + 1).item() == pytest.approx(1.0)
    shuffled_features = x[:, torch.randperm(30, generator=g)]  # same correlation distances
    assert rsa(rdm(x), shuffled_features).item() == pytest.approx(1.0)
    assert abs(rsa(x, torch.randn(12, 30, generator=g))) < 0.4


def test_splitter_index():
    position = torch.arange(10).repeat(40)
    route = torch.arange(400) // 10 % 2
    splitter = torch.where(route == 0, 1.0, 0.0)  # fires on route A only
    place = (position == 3).float()  # same on both routes
    mixed = torch.where(route == 0, 3.0, 1.0)
    activity = torch.stack([splitter, place + 0.1, mixed], 1)
    index = splitter_index(activity, position, route, n_positions=10)
    torch.testing.assert_close(index, torch.tensor([1.0, 0.0, 0.5]))


def test_remapping():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(3, 8, 8, generator=g)
    b = torch.stack([a[0], torch.rand(8, 8, generator=g), -a[2]])
    b[0, :2] = torch.nan  # only bins visited in both count
    r = remapping(a, b)
    assert (
        r[0].item() == pytest.approx(1.0)
        and abs(r[1]) < 0.35
        and r[2].item() == pytest.approx(-1.0)
    )
