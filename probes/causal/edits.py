"""Run a model under many edits of one hook at once, the conditions stacked along the batch.

Every intervention here is affine per unit of a hook's activation a [batch, pos, *units]
(units flattened: index u of ``a.flatten(2)``), at chosen positions:

    a' = a * scale + shift          scale, shift: [conditions, units]

zero ablation: scale 0, shift 0 on the ablated units; mean ablation: scale 0, shift = the
unit's mean; steering: scale 1, shift = alpha * direction. By default each condition is
one forward pass over the batch; ``max_rows`` stacks as many conditions as fit in that many
sequences into one pass ([conditions * batch, pos] inputs). On 2 CPU cores stacking gained
at most 1.2x (transformer, LSTM at 128-256 rows) and slowed Mamba down to 0.3x at 1,024
rows (benchmarks/bench_probes.py), hence the default. On a GPU, where one small batch
leaves the device idle, stacking should pay; that is not measured here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from einops import repeat


def check_hook(model, hook: str) -> None:
    """A KeyError listing the model's hooks if ``hook`` is not one of them."""
    if hook not in model.hook_dict:
        raise KeyError(f"model has no hook {hook!r}; valid: {sorted(model.hook_dict)}")


def position_mask(
    positions: torch.Tensor | Sequence[int] | None, batch: int, length: int
) -> torch.Tensor | None:
    """Positions as a bool mask [batch, pos]: from position indices, a mask [pos] or
    [batch, pos], or None (every position: no mask)."""
    if positions is None:
        return None
    positions = torch.as_tensor(positions)
    if positions.dtype != torch.bool:
        if positions.numel() and not 0 <= int(positions.min()) <= int(positions.max()) < length:
            raise ValueError(f"positions {positions.tolist()} outside 0..{length - 1}")
        positions = torch.zeros(length, dtype=torch.bool).index_fill_(0, positions.long(), True)
    if positions.shape not in ((length,), (batch, length)):
        raise ValueError(
            f"positions mask: expected shape ({length},) or ({batch}, {length}), "
            f"got {tuple(positions.shape)}"
        )
    return positions.expand(batch, length)


@torch.no_grad()
def run_edited(
    model,
    inputs: torch.Tensor,
    hook: str,
    scale: torch.Tensor,
    shift: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    positions: torch.Tensor | Sequence[int] | None = None,
    max_rows: int | None = None,
) -> torch.Tensor:
    """``reduce(logits [batch, pos, d_vocab_out])`` under each condition's edit of ``hook``
    (``scale``, ``shift``: [conditions, units]); returns the results stacked,
    [conditions, ...]. ``inputs``: [batch, pos] token ids or [batch, pos, d_input]."""
    check_hook(model, hook)
    if scale.shape != shift.shape or scale.ndim != 2:
        raise ValueError(
            f"scale and shift: expected equal shapes [conditions, units], got "
            f"{tuple(scale.shape)} and {tuple(shift.shape)}"
        )
    batch, length = inputs.shape[:2]
    mask = position_mask(positions, batch, length)
    per_pass = 1 if max_rows is None else max(1, max_rows // batch)
    results = []
    for start in range(0, scale.shape[0], per_pass):
        edit = affine_edit(
            hook, scale[start : start + per_pass], shift[start : start + per_pass], mask
        )
        n = min(per_pass, scale.shape[0] - start)
        stacked = repeat(inputs, "b ... -> (n b) ...", n=n)
        logits = model.run_with_hooks(stacked, fwd_hooks=[(hook, edit)])
        results.extend(reduce(one) for one in logits.reshape(n, batch, *logits.shape[1:]))
    return torch.stack(results)


def affine_edit(
    name: str, scale: torch.Tensor, shift: torch.Tensor, mask: torch.Tensor | None
) -> Callable:
    """The hook function editing an activation [n * batch, pos, *units] whose n condition
    blocks get ``act * scale + shift`` (scale, shift: [n, units]) where ``mask``
    [batch, pos] holds (everywhere if None)."""
    n = scale.shape[0]

    def edit(act: torch.Tensor, hook) -> torch.Tensor:
        units = act[0, 0].numel()
        if units != scale.shape[1]:
            raise ValueError(
                f"hook {name!r} has {units} units per position (shape {tuple(act.shape[2:])}); "
                f"the edit has {scale.shape[1]}"
            )
        a = act.reshape(n, -1, act.shape[1], units)  # [n, batch, pos, units]
        edited = a * scale[:, None, None].to(a) + shift[:, None, None].to(a)
        if mask is not None:
            edited = torch.where(mask[None, :, :, None], edited, a)
        return edited.reshape(act.shape)

    return edit
