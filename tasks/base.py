"""What every task hands to the models and the probes.

A task draws batches of sequences together with the ground truth the model never sees
directly (the *latents*). Generation is vectorised over the batch and fully determined by
the ``torch.Generator`` passed in, so the same seed always gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Target value of positions that are not scored (as in ``F.cross_entropy``)."""


@dataclass
class Batch:
    """One batch of sequences.

    inputs:  [batch, pos] int64 token ids, or [batch, pos, d_input] float for continuous tasks.
    targets: [batch, pos] int64 class ids (``IGNORE_INDEX`` where not scored), or
             [batch, pos, d_output] float for regression-like targets.
    latents: name -> [batch, pos, ...] ground truth per position (``pos_xy``, ``node``...).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    latents: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.inputs.to(device),
            self.targets.to(device),
            {k: v.to(device) for k, v in self.latents.items()},
        )

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]


class Task:
    """Base class of every task.

    Subclasses set ``config`` (a dataclass), ``d_vocab_in`` (token vocabulary, or ``None``
    for continuous inputs with ``d_input`` features), ``d_vocab_out`` (number of output
    logits) and ``seq_len``, and implement :meth:`sample`. The default objective is
    next-token cross-entropy on ``targets``; tasks with other objectives override
    :meth:`loss` and :meth:`metrics`.
    """

    name: str
    d_vocab_in: int | None
    d_input: int | None = None
    d_vocab_out: int
    seq_len: int

    def evaluation_tasks(self) -> dict[str, Task]:
        """Held-out evaluations as ``prefix -> task``: the task itself (prefix ""), plus any
        variant the task is meant to generalise to (e.g. longer strings, prefix "long_")."""
        return {"": self}

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw ``batch_size`` independent sequences (each in its own environment)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over scored positions. logits: [batch, pos, d_vocab_out]."""
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX
        )

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """Task-specific evaluation numbers for one batch as ``name -> (sum, count)``.

        Sums and counts (not means) so that the evaluation loop can pool batches exactly:
        the reported value is ``sum(sums) / sum(counts)``.
        """
        scored = batch.targets != IGNORE_INDEX
        correct = (logits.argmax(-1) == batch.targets) & scored
        return {"accuracy": (correct.sum().item(), int(scored.sum()))}
