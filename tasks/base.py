"""What every task hands to the models and the probes.

A task draws batches of sequences together with the ground truth the model never sees
directly (the *latents*). Generation is vectorised over the batch and fully determined by
the ``torch.Generator`` passed in, so the same seed always gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tasks.targets import EnvironmentMaps, MapSpec, ProbeTarget

if TYPE_CHECKING:
    from tasks.reference import Reference

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


@dataclass
class Curve:
    """A metric as a function of x, pooled exactly over batches: ``sums / counts`` at ``x``.

    x, sums, counts: [points]; points with count 0 are undefined.
    """

    x: torch.Tensor
    sums: torch.Tensor
    counts: torch.Tensor

    def __add__(self, other: Curve) -> Curve:
        if not torch.equal(self.x, other.x):
            raise ValueError("curves with different x cannot be pooled")
        return Curve(self.x, self.sums + other.sums, self.counts + other.counts)


def accuracy_by(correct: torch.Tensor, key: torch.Tensor, n_values: int, x=None) -> Curve:
    """Accuracy at each value ``0..n_values - 1`` of an integer ``key`` (same shape as
    ``correct``; entries with key < 0 are left out); ``x`` labels the values (default
    the values themselves)."""
    keep = key >= 0
    index = key[keep].long().clamp(max=n_values - 1).cpu()
    counts = torch.bincount(index, minlength=n_values).double()
    sums = torch.bincount(index, weights=correct[keep].double().cpu(), minlength=n_values)
    x = torch.arange(n_values, dtype=torch.float64) if x is None else torch.as_tensor(x)
    return Curve(x.double(), sums, counts)


def environment_of(n_envs: int, walks_per_env: int) -> torch.Tensor:
    """[n_envs * walks_per_env] the environment of each walk, environment-major."""
    if n_envs < 1 or walks_per_env < 1:
        raise ValueError(
            f"need n_envs >= 1 and walks_per_env >= 1, got {n_envs} and {walks_per_env}"
        )
    return torch.arange(n_envs).repeat_interleave(walks_per_env)


def label_environments(batch: Batch, walks_per_env: int) -> Batch:
    """``batch`` (walks grouped by environment, environment-major) with the latents ``env``
    and ``walk`` [batch, pos] (int64) added."""
    index = torch.arange(batch.batch_size)[:, None].expand(-1, batch.seq_len)
    batch.latents["env"] = index // walks_per_env
    batch.latents["walk"] = index % walks_per_env
    return batch


class Task:
    """Base class of every task.

    Subclasses set ``config`` (a dataclass), ``d_vocab_in`` (token vocabulary, or ``None``
    for continuous inputs with ``d_input`` features), ``d_vocab_out`` (number of output
    logits) and ``seq_len``, and implement :meth:`sample`, and declare what the probes and
    the cell census read: :meth:`probe_targets` and :meth:`rate_maps` (a task that does not
    is refused by :func:`tasks.build_task`). The default objective is next-token
    cross-entropy on ``targets``; tasks with other objectives override :meth:`loss` and
    :meth:`metrics`. Tasks whose environments share a structure but not its symbols
    implement :meth:`sample_environments` and declare :meth:`environment_maps` (remapping).
    :meth:`reference_predictors` says what a network is compared with
    (:mod:`tasks.reference`).
    """

    name: str
    d_vocab_in: int | None
    d_input: int | None = None
    chance_accuracy: float | None = None
    """Accuracy of guessing (drawn in figures as the chance level); None where it does
    not apply."""
    d_vocab_out: int
    seq_len: int

    def evaluation_tasks(self) -> dict[str, Task]:
        """Held-out evaluations as ``prefix -> task``: the task itself (prefix ""), plus any
        variant the task is meant to generalise to (e.g. longer strings, prefix "long_")."""
        return {"": self}

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw ``batch_size`` independent sequences (each in its own environment)."""
        raise NotImplementedError

    def sample_environments(
        self, n_envs: int, walks_per_env: int, generator: torch.Generator
    ) -> Batch | None:
        """``n_envs * walks_per_env`` sequences grouped by environment (environment-major:
        the walks of environment 0 first): environments share the structure (graph, track)
        and redraw the symbols; the walks of one environment see the same symbol at the
        same place. Latents as :meth:`sample`'s, ``env_id`` shared by the walks of an
        environment, plus ``env`` (``0..n_envs - 1``) and ``walk`` (the walk's index in its
        environment), see :func:`label_environments`. None for a task without
        environments (the default)."""
        return None

    def environment_maps(self) -> tuple[EnvironmentMaps, ...]:
        """How activity is binned for remapping across the environments of
        :meth:`sample_environments` (see :mod:`tasks.targets`); () without environments."""
        return ()

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        """The latents probes decode, with their kind and the tokens they are read at."""
        raise NotImplementedError

    def rate_maps(self) -> tuple[MapSpec, ...]:
        """How activity is binned for the cell census (see :mod:`tasks.targets`)."""
        raise NotImplementedError

    def reference_predictors(self) -> tuple[Reference, ...]:
        """Fresh, unfitted predictors that lack what a study is about, scored beside the
        network (:mod:`tasks.reference`). Default: ``history_free``, ``clock`` and
        ``unigram`` for token inputs, none for continuous ones (such a task declares its
        own)."""
        from tasks.reference import token_references  # it builds on this module

        return token_references() if self.d_vocab_in is not None else ()

    def curves(self, logits: torch.Tensor, batch: Batch) -> dict[str, Curve]:
        """Accuracy-like curves of one evaluation batch, ``name -> Curve`` (e.g. accuracy by
        string length); pooled over batches like :meth:`metrics`. None by default."""
        return {}

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
