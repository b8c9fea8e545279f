"""Figure-8 (continuous) alternation maze (Wood et al. 2000; Frank et al. 2000).

The maze is a ``3 x stem_length`` grid: a central stem (column 1) walked upwards, and a left
(column 0) and a right (column 2) return arm walked downwards. A lap is the stem from its
base ``(1, 0)`` to the choice point ``(1, stem_length - 1)``, then one arm from top to
bottom, back to the stem base: 2 * stem_length nodes. Laps alternate left, right, left...;
with ``p_repeat > 0`` a lap repeats the previous arm instead, which decorrelates the
retrospective and the prospective variable. At every step the agent stays put with
probability ``p_stay`` so that the position in the sequence does not give the phase away.

Every node shows its own token (the maze is the same in every sequence): inputs are the
node tokens ``node_0 .. node_{T-1}`` and the targets the next node. Stem positions are
identical on both routes, so predicting the turn at the choice point needs memory of the
last arm: *splitter* cells on the stem that fire differently by route.

Latents (all [batch, T]):
  node (``row * 3 + col``), pos_xy [.., 2] float (col, row), segment (0 stem, 1 left arm,
  2 right arm), route (retrospective: 0 left / 1 right, the arm of the current lap when on
  an arm, else the arm of the lap just completed), next_turn (prospective: the arm that will
  be taken at the next choice point that lies ahead, i.e. from an arm, the next lap's),
  lap (laps started since the walk began), on_stem (segment 0), step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.base import Batch, Task
from tasks.targets import GraphMaps, ProbeTarget, RouteMaps

LEFT, RIGHT = 0, 1


@dataclass
class AlternationConfig:
    stem_length: int = 4
    """Nodes on the stem (and on each arm); a lap has 2 * stem_length nodes."""
    n_steps: int = 64
    """Tokens per sequence."""
    p_stay: float = 0.2
    """Probability of staying in place at each step."""
    p_repeat: float = 0.0
    """Probability that a lap repeats the previous arm instead of alternating."""

    def __post_init__(self):
        if self.stem_length < 2 or self.n_steps < 2:
            raise ValueError("stem_length and n_steps must be at least 2")
        for name in ("p_stay", "p_repeat"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


class AlternationTask(Task):
    """Next-node prediction on a figure-8 maze walked in alternation."""

    name = "alternation"

    def __init__(self, config: AlternationConfig | None = None):
        self.config = config or AlternationConfig()
        c = self.config
        self.n_nodes = 3 * c.stem_length
        self.d_vocab_in = self.n_nodes
        self.d_vocab_out = self.n_nodes
        self.seq_len = c.n_steps
        self.choice_node = (c.stem_length - 1) * 3 + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c, B, H = self.config, batch_size, self.config.stem_length
        T = c.n_steps + 1  # one more node than tokens: the last target
        k = torch.randint(2 * H, (B,), generator=generator)  # phase along the lap
        prev = torch.randint(2, (B,), generator=generator)  # arm of the current/last lap
        u_stay = torch.rand(B, T, generator=generator)
        u_rep = torch.rand(B, T, generator=generator)

        def decide(last, t):
            return torch.where(u_rep[:, t] < c.p_repeat, last, 1 - last)

        nxt = decide(prev, 0)
        lap = torch.zeros(B, dtype=torch.long)
        ks, routes, turns, laps = [], [], [], []
        for t in range(T):
            if t > 0:
                move = u_stay[:, t] >= c.p_stay
                k_new = torch.where(move, (k + 1) % (2 * H), k)
                enter_arm = move & (k_new == H)  # leaving the choice point onto an arm
                prev = torch.where(enter_arm, nxt, prev)
                nxt = torch.where(enter_arm, decide(nxt, t), nxt)
                lap = lap + (move & (k_new == 0)).long()
                k = k_new
            ks.append(k)
            routes.append(prev)
            turns.append(nxt)
            laps.append(lap)
        k, route, turn, lap = (torch.stack(v, 1) for v in (ks, routes, turns, laps))
        on_arm = k >= H
        col = torch.where(on_arm, torch.where(route == LEFT, 0, 2), 1)
        row = torch.where(on_arm, 2 * H - 1 - k, k)
        nodes = row * 3 + col  # [B, T+1]
        segment = torch.where(on_arm, 1 + route, 0)
        latents = {
            "node": nodes[:, :-1],
            "pos_xy": torch.stack([col, row], -1)[:, :-1].float(),
            "segment": segment[:, :-1],
            "route": route[:, :-1],
            "next_turn": turn[:, :-1],
            "lap": lap[:, :-1],
            "on_stem": segment[:, :-1] == 0,
            "step": torch.arange(c.n_steps).expand(B, -1).clone(),
        }
        return Batch(nodes[:, :-1].clone(), nodes[:, 1:].clone(), latents)

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        """Retrospective (route of the last lap) and prospective (next turn) coding on the
        stem, and position."""
        return (
            ProbeTarget("route", "classification", at="on_stem", n_classes=2),
            ProbeTarget("next_turn", "classification", at="on_stem", n_classes=2),
            ProbeTarget("pos_xy", "regression", spatial=True),
        )

    def rate_maps(self) -> tuple[RouteMaps | GraphMaps, ...]:
        xy = tuple((float(n % 3), float(n // 3)) for n in range(self.n_nodes))
        return (RouteMaps(self.n_nodes, at="on_stem"), GraphMaps(node_xy=xy))

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """accuracy, and choice_accuracy: the prediction made at the choice point when the
        agent moves off it onto an arm (the step that needs memory of the last arm)."""
        correct = logits.argmax(-1) == batch.targets
        choice = (batch.inputs == self.choice_node) & (batch.targets != self.choice_node)
        return {
            "accuracy": (correct.sum().item(), correct.numel()),
            "choice_accuracy": ((correct & choice).sum().item(), int(choice.sum())),
        }
