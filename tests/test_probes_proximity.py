import pytest
import torch

from probes.proximity import proximity_error


def brute_force(true, pred):
    """The definition as a double loop over samples."""
    n = len(true)
    out = []
    for i in range(n):
        own = float(torch.dist(true[i], pred[i]))
        out.append(sum(float(torch.dist(true[i], pred[j])) < own for j in range(n)) / n)
    return torch.tensor(out, dtype=torch.float64)


def test_hand_computed_case():
    true = torch.tensor([0.0, 1.0, 2.0, 3.0])
    pred = torch.tensor([0.0, 1.5, 2.0, 0.5])
    # 0: own error 0 -> nothing closer. 1: own 0.5; pred 0.0/1.5/2.0/0.5 at distances
    # 1, 0.5, 1, 0.5 -> none strictly closer. 2: own 0. 3: own 2.5; pred 1.5 (1.5 away) and
    # 2.0 (1.0 away) are closer -> 2/4.
    torch.testing.assert_close(
        proximity_error(true, pred), torch.tensor([0.0, 0.0, 0.0, 0.5], dtype=torch.float64)
    )


def test_matches_the_definition_on_random_positions_across_chunks():
    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 6, (90, 2), generator=g).float()
    pred = true + torch.randn(90, 2, generator=g)
    torch.testing.assert_close(proximity_error(true, pred, chunk=32), brute_force(true, pred))


def test_perfect_predictions_score_zero_and_uninformative_ones_about_half():
    g = torch.Generator().manual_seed(1)
    true = torch.rand(2000, 2, generator=g)
    assert proximity_error(true, true).max() == 0
    shuffled = true[torch.randperm(2000, generator=g)]
    assert proximity_error(true, shuffled).mean() == pytest.approx(0.5, abs=0.03)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"equal shape \[n, k\] or \[n\]"):
        proximity_error(torch.zeros(3, 2), torch.zeros(3, 3))
