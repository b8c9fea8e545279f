"""Decode a latent from every layer with cross-validated ridge probes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from einops import rearrange

from models.config import ProbeConfig
from probes.ridge import ProbeResult, RidgeStats, cross_validated_ridge, fold_of

Acts = dict[str, torch.Tensor]  # hook -> [batch, pos, d]
Latents = dict[str, torch.Tensor]  # name -> [batch, pos, ...]


def decode_layers(
    batches: Iterable[tuple[Acts, Latents]], hooks: list[str], config: ProbeConfig
) -> dict[str, ProbeResult]:
    """Ridge-decode ``config.latent`` from each hook, at the positions where the boolean
    latent ``config.token_filter`` holds. Environments (``env_id``, else each sequence) are
    the unit of cross-validation and of the held-out test split."""
    stats: dict[str, list[RidgeStats]] = {}
    seen = 0
    for acts, latents in batches:
        batch, pos = latents[config.latent].shape[:2]
        if config.token_filter:
            keep = latents[config.token_filter].bool()
        else:
            keep = torch.ones(batch, pos, dtype=torch.bool)
        groups = latents.get("env_id")
        if groups is None:
            groups = (seen + torch.arange(batch))[:, None].expand(batch, pos)
        seen += batch
        fold = fold_of(groups[keep], config.folds, config.test_fraction)
        y = latents[config.latent][keep].double()
        y = rearrange(y, "n ... -> n (...)")
        for hook in hooks:
            x = acts[hook][keep]
            if hook not in stats:
                stats[hook] = [RidgeStats(x.shape[1], y.shape[1]) for _ in range(config.folds + 1)]
            for f in range(-1, config.folds):  # index -1: the test set
                rows = fold == f
                stats[hook][f].add(x[rows], y[rows])
    if not stats:
        raise ValueError("no batches to probe")
    return {hook: cross_validated_ridge(s[-1], s[:-1]) for hook, s in stats.items()}
