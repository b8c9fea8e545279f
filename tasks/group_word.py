"""Group word problems (Merrill, Petty & Sabharwal 2024, "The illusion of state in
state-space models"): read a word of group elements, output the running product.

For a solvable group such as the cyclic group Z60 the running product is computable by a
constant-depth circuit (TC0 layers suffice); for the non-solvable alternating group A5 it is
NC1-complete, so fixed-depth transformers and diagonal SSMs cannot track it at all lengths.
Both groups have 60 elements, so the two tasks differ only in the multiplication table.

Groups (config ``group``):
  * ``"A5"``: even permutations of ``{0..4}``, indexed in lexicographic order (element 0 is
    the identity); ``S5`` (all 120 permutations) is also available.
  * ``"Z60"``: integers mod 60 under addition (element 0 is the identity).
  * ``"Z2"``: parity (bits under XOR), the simplest state-tracking problem and the one
    diagonal SSMs with positive transition eigenvalues cannot solve at all lengths
    (Grazzi et al. 2024).
Convention: permutations are tuples ``p`` with ``p[i]`` the image of ``i``; the product
``p * q`` is the composition "apply q, then p": ``(p * q)[i] = p[q[i]]``. The running
product is ``s_t = x_1 * x_2 * ... * x_t`` (left to right), i.e. ``s_t = s_{t-1} * x_t``.

Tokens: element ids; inputs ``x_1..x_T`` drawn uniformly; targets ``s_1..s_T`` (every
position scored). Latent ``state`` [batch, T] = ``s_t`` (the same as the targets: the state
the model must track), and ``step``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch

from tasks.base import Batch, Curve, Task, accuracy_by
from tasks.targets import ProbeTarget, TuningMaps

GROUPS = ("A5", "S5", "Z60", "Z2")
CYCLIC = {"Z60": 60, "Z2": 2}


def permutation_parity(p: tuple[int, ...]) -> int:
    """0 for even, 1 for odd (number of inversions mod 2)."""
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p))) % 2


@lru_cache
def group_elements(group: str) -> tuple:
    """The elements of ``group`` in index order (permutation tuples, or ints for Z60)."""
    if group in CYCLIC:
        return tuple(range(CYCLIC[group]))
    perms = list(itertools.permutations(range(5)))  # lexicographic: identity first
    if group == "A5":
        perms = [p for p in perms if permutation_parity(p) == 0]
    elif group != "S5":
        raise ValueError(f"unknown group {group!r}; valid: {list(GROUPS)}")
    return tuple(perms)


@lru_cache
def multiplication_table(group: str) -> torch.Tensor:
    """[n, n] int64 table: ``table[a, b]`` = index of ``a * b``."""
    elements = group_elements(group)
    n = len(elements)
    if group in CYCLIC:
        a = torch.arange(n)
        return (a[:, None] + a[None, :]) % n
    index = {p: i for i, p in enumerate(elements)}
    table = [[index[tuple(p[q[i]] for i in range(5))] for q in elements] for p in elements]
    return torch.tensor(table)


@dataclass
class GroupWordConfig:
    group: str = "A5"
    """``"A5"``, ``"S5"``, ``"Z60"`` or ``"Z2"`` (parity)."""
    n_steps: int = 32
    """Word length (tokens per sequence)."""

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"unknown group {self.group!r}; valid: {list(GROUPS)}")
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {self.n_steps}")


class GroupWordTask(Task):
    """Running product of a word of group elements (state tracking)."""

    name = "group_word"

    def __init__(self, config: GroupWordConfig | None = None):
        self.config = config or GroupWordConfig()
        self.table = multiplication_table(self.config.group)
        self.n_elements = self.table.shape[0]
        self.d_vocab_in = self.d_vocab_out = self.n_elements
        self.chance_accuracy = 1 / self.n_elements
        self.seq_len = self.config.n_steps

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T = self.config.n_steps
        x = torch.randint(self.n_elements, (batch_size, T), generator=generator)
        states = torch.empty_like(x)
        s = torch.zeros(batch_size, dtype=torch.long)  # identity
        for t in range(T):
            s = self.table[s, x[:, t]]
            states[:, t] = s
        latents = {"state": states, "step": torch.arange(T).expand(batch_size, -1).clone()}
        return Batch(x, states.clone(), latents)

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return (ProbeTarget("state", "classification", n_classes=self.n_elements),)

    def rate_maps(self) -> tuple[TuningMaps, ...]:
        return (TuningMaps("state", self.n_elements),)

    @torch.no_grad()
    def curves(self, logits: torch.Tensor, batch: Batch) -> dict[str, Curve]:
        """accuracy_by_length: accuracy of the running product after t = 1..T elements."""
        correct = logits.argmax(-1) == batch.targets
        length = batch.latents["step"] + 1
        return {"accuracy_by_length": accuracy_by(correct, length, self.config.n_steps + 1)}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """accuracy (per token), sequence_accuracy (every state right), and
        ``accuracy_last_quarter`` (the last quarter of positions: the longest prefixes)."""
        correct = logits.argmax(-1) == batch.targets
        T = correct.shape[1]
        last = correct[:, T - max(1, T // 4) :]
        return {
            "accuracy": (correct.sum().item(), correct.numel()),
            "sequence_accuracy": (correct.all(1).sum().item(), correct.shape[0]),
            "accuracy_last_quarter": (last.sum().item(), last.numel()),
        }
