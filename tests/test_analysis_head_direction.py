import math

import pytest
import torch

from analysis.head_direction import head_direction_scores


def test_head_direction_mean_resultant_length():
    g = torch.Generator().manual_seed(1)
    heading = torch.rand(20_000, generator=g) * 2 * math.pi - math.pi
    tuned = torch.exp(4 * (torch.cos(heading - 1.0) - 1))
    flat = torch.ones_like(heading)
    hd = head_direction_scores(heading, torch.stack([tuned, flat], 1), bins=36)
    assert hd.mean_resultant_length[0] > 0.6 and hd.mean_resultant_length[1] < 1e-6
    assert hd.preferred[0].item() == pytest.approx(1.0, abs=0.05)
