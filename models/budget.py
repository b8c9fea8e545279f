"""Size models to a common parameter budget so architecture comparisons are fair."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from models.registry import build_model, count_parameters


def fit_to_budget(name: str, config: Any, budget: int, tolerance: float = 0.1):
    """:func:`fit_width` of ``config``, computed once per configuration: the seed does not
    change the parameter count, so runs that differ only in it share the search."""
    fields = dataclasses.asdict(config)
    seeded = "seed" in fields
    seed = fields.pop("seed", None)
    key = (name, json.dumps(fields, sort_keys=True, default=str), budget, tolerance)
    if key not in _FITTED:
        _FITTED[key] = fit_width(name, config, budget, tolerance)
    fitted = _FITTED[key]
    return dataclasses.replace(fitted, seed=seed) if seeded else fitted


_FITTED: dict[tuple, Any] = {}


def fit_width(name: str, config: Any, budget: int, tolerance: float = 0.1):
    """Return ``config`` with ``d_model`` chosen so the model has ``budget`` parameters.

    Every other field is kept (an explicit ``d_mlp`` keeps its ratio to ``d_model``).
    ``d_model`` moves in steps of ``d_model_multiple`` where the config has one, else of
    ``n_heads`` for models that have heads. Where those steps are too coarse to land within
    ``tolerance`` (relative) and the model has an MLP width (``d_mlp``), the MLP width of
    the two nearest widths is fitted too. Raises ValueError when nothing lands within it.
    """
    step = getattr(config, "d_model_multiple", getattr(config, "n_heads", 1))

    def resized(d_model: int):
        fields = {"d_model": d_model}
        if getattr(config, "d_mlp", None) is not None:  # keep the MLP's width ratio
            fields["d_mlp"] = max(1, round(config.d_mlp * d_model / config.d_model))
        return dataclasses.replace(config, **fields)

    def size(d_model: int) -> int:
        return count(name, resized(d_model))

    lo, hi = 1, 1
    while size(hi * step) < budget:  # parameters grow monotonically with width
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid * step) < budget else (lo, mid)
    candidates = [resized(lo * step), resized(hi * step)]
    best = min(candidates, key=lambda c: abs(count(name, c) - budget))
    if abs(count(name, best) - budget) > tolerance * budget and hasattr(config, "d_mlp"):
        candidates = [fit_mlp_width(name, c, budget) for c in candidates]
        best = min(candidates, key=lambda c: abs(count(name, c) - budget))
    n_params = count(name, best)
    if abs(n_params - budget) > tolerance * budget:
        raise ValueError(
            f"{name}: no d_model gives {budget} parameters within {tolerance:.0%} "
            f"(closest: d_model={best.d_model} with {n_params}); change n_layers or the budget"
        )
    return best


def count(name: str, config: Any) -> int:
    """Parameters of model ``name`` built from ``config`` (on the meta device: no memory
    is allocated and nothing is initialised)."""
    with torch.device("meta"):
        return count_parameters(build_model(name, config))


def fit_mlp_width(name: str, config: Any, budget: int):
    """``config`` with the MLP width (1 .. 8 d_model) whose count is closest to ``budget``
    (parameters grow with it)."""
    lo, hi = 1, 8 * config.d_model
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(name, dataclasses.replace(config, d_mlp=mid)) < budget:
            lo = mid
        else:
            hi = mid
    options = [dataclasses.replace(config, d_mlp=width) for width in (lo, hi)]
    return min(options, key=lambda c: abs(count(name, c) - budget))
