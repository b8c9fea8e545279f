"""Decode every declared target of a task from every hook with cross-validated probes."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from einops import rearrange

from probes.config import ProbeConfig
from probes.ridge import ProbeResult, RidgeStats, cross_validated_ridge, fold_of
from tasks.targets import ProbeTarget

Acts = dict[str, torch.Tensor]  # hook -> [batch, pos, d]
Latents = dict[str, torch.Tensor]  # name -> [batch, pos, ...]


def target_rows(target: ProbeTarget, latents: Latents) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [batch, pos] of the tokens probed, values [n, k] float64 to regress) of a
    regression or circular target: circular values become (cos, sin) of 2 pi v / period."""
    if target.latent not in latents:
        raise KeyError(
            f"probe target {target.latent!r} is not a latent of this task; latents: "
            f"{sorted(latents)}"
        )
    value = latents[target.latent]
    if target.at is None:
        mask = torch.ones(value.shape[:2], dtype=torch.bool, device=value.device)
    else:
        mask = latents[target.at].bool()
    y = rearrange(value[mask].double(), "n ... -> n (...)")
    if target.kind == "circular":
        angle = y * (2 * math.pi / target.period)
        y = torch.cat([angle.cos(), angle.sin()], 1)
    return mask, y


def decode_targets(
    batches: Iterable[tuple[Acts, Latents]],
    hooks: list[str],
    targets: list[ProbeTarget],
    config: ProbeConfig,
) -> dict[tuple[str, str], ProbeResult]:
    """Ridge-decode each regression/circular target from each hook in one pass over the
    batches: ``(target.name, hook) -> ProbeResult``. Environments (``env_id``, else each
    sequence) are the unit of cross-validation and of the held-out test split."""
    for target in targets:
        if target.kind == "classification":
            raise ValueError(
                f"target {target.name!r} is categorical: ridge decodes only "
                "regression and circular targets"
            )
    stats: dict[tuple[str, str], list[RidgeStats]] = {}
    if not targets:
        return {}
    seen = 0
    for acts, latents in batches:
        missing = [h for h in hooks if h not in acts]
        if missing:
            raise KeyError(f"no activations of hook(s) {missing}; have: {sorted(acts)}")
        batch, pos = next(iter(acts.values())).shape[:2]
        groups = latents.get("env_id")
        if groups is None:
            groups = (seen + torch.arange(batch))[:, None].expand(batch, pos)
        seen += batch
        for target in targets:
            mask, y = target_rows(target, latents)
            fold = fold_of(groups[mask], config.folds, config.test_fraction)
            for hook in hooks:
                x = acts[hook][mask]
                key = (target.name, hook)
                if key not in stats:
                    stats[key] = [
                        RidgeStats(x.shape[1], y.shape[1]) for _ in range(config.folds + 1)
                    ]
                for f in range(-1, config.folds):  # index -1: the test set
                    rows = fold == f
                    stats[key][f].add(x[rows], y[rows])
    if not stats:
        raise ValueError("no batches to probe")
    return {key: cross_validated_ridge(s[-1], s[:-1]) for key, s in stats.items()}
