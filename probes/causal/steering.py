"""Steering: add alpha times a unit direction to a hook's activation and watch the output.

A probe that decodes a variable from a hook says the information is there; steering along
the probe's direction asks whether the network reads it from there. The answer is a
dose-response curve: the change of a task-specific scalar of the output (``readout``, e.g.
the expected position under the predicted distribution) against alpha, beside the same
curve for random unit directions. A direction the network uses moves the readout the way
the decoded variable predicts (``alpha * probe gain``); random directions of the same
norm should barely move it.

This edits the hook in one forward pass (TransformerLens hooks): in a transformer later
positions see the edit through attention, but a recurrent model's later steps were computed
from the unedited state. To carry a steer forward through a recurrent state use
:func:`probes.causal.patching.rollout` with ``patches={t: {state: lambda h: h + alpha * u}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from probes.causal.edits import run_edited


@dataclass
class DoseResponse:
    alphas: torch.Tensor
    """[n_alpha] steering strengths (the norm of the added vector)."""
    along: torch.Tensor
    """[n_alpha] mean change of the readout when steering along the direction."""
    random: torch.Tensor
    """[n_random, n_alpha] the same along random unit directions."""

    def slopes(self) -> tuple[float, torch.Tensor]:
        """Least-squares slopes through the origin of change vs alpha: along the direction,
        and [n_random] along the random directions."""
        a = self.alphas.double()
        fit = (self.random.double() @ a) / (a @ a)
        return float(self.along.double() @ a / (a @ a)), fit


@torch.no_grad()
def steer(
    model,
    inputs: torch.Tensor,
    hook: str,
    direction: torch.Tensor,
    alphas: Sequence[float] | torch.Tensor,
    readout: Callable[[torch.Tensor], torch.Tensor],
    positions: torch.Tensor | Sequence[int] | None = None,
    n_random: int = 8,
    seed: int = 0,
    max_rows: int | None = None,
) -> DoseResponse:
    """Dose-response of ``readout(logits [batch, pos, d_vocab_out])`` (any shape; its mean
    is taken) to adding ``alpha * direction / |direction|`` to ``hook`` at ``positions``
    (indices, a mask [pos] or [batch, pos]; None: all), for each alpha, and the same along
    ``n_random`` random unit directions. ``direction``: the hook's unit shape (e.g.
    [d_model]); ``inputs``: [batch, pos] or [batch, pos, d_input]."""
    u = direction.detach().flatten().double()
    if not u.norm() > 0:
        raise ValueError("direction has zero norm")
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(n_random, u.numel(), generator=g, dtype=torch.float64)
    directions = torch.cat([u[None], rand])  # [1 + n_random, units]
    directions = directions / directions.norm(dim=1, keepdim=True)
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    shifts = alphas[None, :, None] * directions[:, None, :]  # [1 + n_random, n_alpha, units]
    shifts = torch.cat([torch.zeros(1, u.numel(), dtype=torch.float64), shifts.flatten(0, 1)])
    values = run_edited(
        model,
        inputs,
        hook,
        torch.ones_like(shifts).float(),
        shifts.float(),
        lambda logits: readout(logits).double().mean(),
        positions,
        max_rows,
    )
    change = (values[1:] - values[0]).reshape(1 + n_random, len(alphas))
    return DoseResponse(alphas, change[0], change[1:])
