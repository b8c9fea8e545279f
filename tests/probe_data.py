"""Synthetic probe data with known ground truth: (acts [n, d], labels [n, ...], groups [n])."""

import torch


def one_direction(
    values: int = 20,
    d: int = 16,
    signal: float = 1.0,
    n_groups: int = 60,
    rows_per_group: int = 40,
    groups_per_batch: int = 10,
    classification: bool = False,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A latent v in 0..values-1 carried by one unit direction u: acts = signal * v * u +
    N(0, 1) noise; ``signal=0`` gives pure noise. Labels: v (float, or int classes)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    batches = []
    for first in range(0, n_groups, groups_per_batch):
        n = groups_per_batch * rows_per_group
        v = torch.randint(values, (n,), generator=g)
        acts = signal * v[:, None].float() * u + torch.randn(n, d, generator=g)
        groups = first + torch.arange(n) // rows_per_group
        batches.append((acts, v if classification else v.float(), groups))
    return batches
