"""Linear track and directed walks (Stachenfeld et al. 2017; Mehta et al. 2000).

An agent walks a track of ``n_positions`` nodes. It has a heading (+1 or -1) and at every
step moves along it with probability ``p_forward``, against it with ``p_backward``, and
stays otherwise. On an open track (``circular=False``) the agent turns around at the ends,
running laps back and forth like a rat on a linear track; on a circular track it keeps
going round. The default walk is *directed* (mostly forward); the *bidirectional control*
is ``p_forward == p_backward`` (an unbiased random walk). The successor representation
predicts that place fields skew backwards, against the direction of travel, under directed
walks and not under the control.

Token layout as in :mod:`tasks.graph_nav`: every environment draws a fresh symbol for each
position from ``n_symbols`` and the sequence is ``obs_0, act_0, obs_1, act_1, ...`` with
the next observation predicted at each action token. Actions are absolute moves:
``n_symbols + 0`` = +1 (east), ``+ 1`` = -1 (west), ``+ 2`` = stay. With
``show_actions=False`` the sequence is ``obs_0, obs_1, ...`` and the next observation is
predicted at every token, so the model must learn the walk's statistics (the policy).

Latents (per token, [batch, pos]): ``pos`` (int position), ``pos_xy`` [.., 2] float
(always ``(pos, 0)``, also on circular tracks, so rate maps bin positions directly),
``direction`` (heading, +1/-1, of the
move made from this position), ``travel`` (the same as a class: 0 for +1, 1 for -1),
``node``, ``env_id``, ``step``, ``is_obs``, ``visited_before`` (at scored tokens: the
position reached next was seen before); batches of :meth:`LinearTrackTask.sample_environments`
(several walks in each of several environments: the same track, symbols redrawn) add
``env`` and ``walk``.

:meth:`LinearTrackTask.transition_matrix` is the walk's exact Markov chain over
(position, heading) states, from which the successor representation follows analytically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.base import IGNORE_INDEX, Batch, Task, environment_of, label_environments
from tasks.graph_nav import interleave, occurred_before
from tasks.targets import EnvironmentMaps, ProbeTarget, TrackMaps

MOVES = torch.tensor([1, -1, 0])  # action -> displacement


@dataclass
class LinearTrackConfig:
    n_positions: int = 10
    """Nodes on the track."""
    n_symbols: int = 16
    """Sensory alphabet; each environment draws a symbol per position."""
    n_steps: int = 64
    """Positions per walk."""
    p_forward: float = 0.8
    """Probability of a step along the heading."""
    p_backward: float = 0.05
    """Probability of a step against the heading (the rest: stay)."""
    circular: bool = False
    """A ring (laps in one direction) instead of an open track (turn around at the ends)."""
    show_actions: bool = True
    """Interleave action tokens (TEM layout); without them the sequence is observations only."""

    def __post_init__(self):
        if self.n_positions < 2 or self.n_symbols < 2 or self.n_steps < 2:
            raise ValueError("n_positions, n_symbols and n_steps must be at least 2")
        if min(self.p_forward, self.p_backward) < 0 or self.p_forward + self.p_backward > 1:
            raise ValueError(
                f"p_forward={self.p_forward}, p_backward={self.p_backward} must be >= 0 with "
                "sum <= 1"
            )


def directed_walk(config: LinearTrackConfig, batch: int, generator: torch.Generator):
    """positions [B, T+1], headings [B, T] (heading of move t) and actions [B, T]."""
    c = config
    n, T = c.n_positions, c.n_steps
    pos = torch.randint(n, (batch,), generator=generator)
    heading = torch.randint(2, (batch,), generator=generator) * 2 - 1
    u = torch.rand(batch, T, generator=generator)
    positions = torch.empty(batch, T + 1, dtype=torch.long)
    headings = torch.empty(batch, T, dtype=torch.long)
    actions = torch.empty(batch, T, dtype=torch.long)
    positions[:, 0] = pos
    for t in range(T):
        if not c.circular:  # turn around at the ends
            heading = torch.where((pos == n - 1) & (heading == 1), -1, heading)
            heading = torch.where((pos == 0) & (heading == -1), 1, heading)
        rel = torch.where(
            u[:, t] < c.p_forward, 1, torch.where(u[:, t] < c.p_forward + c.p_backward, -1, 0)
        )
        step = rel * heading
        if c.circular:
            new = (pos + step) % n
        else:
            new = pos + step
            blocked = (new < 0) | (new >= n)  # a backward step into the end: stay
            step = torch.where(blocked, 0, step)
            new = torch.where(blocked, pos, new)
        actions[:, t] = torch.where(step == 1, 0, torch.where(step == -1, 1, 2))
        headings[:, t] = heading
        pos = new
        positions[:, t + 1] = pos
    return positions, headings, actions


class LinearTrackTask(Task):
    """Next-observation prediction on directed (or bidirectional) walks along a track."""

    name = "linear_track"

    def __init__(self, config: LinearTrackConfig | None = None):
        self.config = config or LinearTrackConfig()
        c = self.config
        self.n_actions = 3
        self.d_vocab_in = c.n_symbols + (self.n_actions if c.show_actions else 0)
        self.d_vocab_out = c.n_symbols
        self.chance_accuracy = 1 / c.n_symbols
        self.seq_len = (2 if c.show_actions else 1) * c.n_steps

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        positions, headings, actions = directed_walk(self.config, batch_size, generator)
        symbols, env_id = self._draw_environments(batch_size, generator)
        return self._walk_batch(positions, headings, actions, symbols, env_id)

    def sample_environments(
        self, n_envs: int, walks_per_env: int, generator: torch.Generator
    ) -> Batch:
        env = environment_of(n_envs, walks_per_env)
        positions, headings, actions = directed_walk(self.config, len(env), generator)
        symbols, env_id = self._draw_environments(n_envs, generator)
        batch = self._walk_batch(positions, headings, actions, symbols[env], env_id[env])
        return label_environments(batch, walks_per_env)

    def _draw_environments(self, n: int, generator: torch.Generator):
        """``n`` environments: symbols [n, n_positions] (one per position) and env_id [n]."""
        c = self.config
        symbols = torch.randint(c.n_symbols, (n, c.n_positions), generator=generator)
        return symbols, torch.randint(2**62, (n,), generator=generator)

    def _walk_batch(self, positions, headings, actions, symbols, env_id) -> Batch:
        """The batch of walks (:func:`directed_walk`'s positions [B, T+1], headings and
        actions [B, T]) in environments symbols [B, n_positions] and env_id [B]."""
        c = self.config
        batch_size = len(positions)
        obs = symbols.gather(1, positions)  # [B, T+1]
        here = positions[:, :-1]
        seen = occurred_before(positions)[:, 1:]  # the target position was seen before
        steps = torch.arange(c.n_steps).expand(batch_size, -1)
        per_step = {
            "pos": here,
            "node": here,
            "direction": headings,
            "travel": (headings < 0).long(),
            "step": steps,
        }
        if c.show_actions:
            inputs = interleave(obs[:, :-1], c.n_symbols + actions)
            targets = interleave(torch.full_like(actions, IGNORE_INDEX), obs[:, 1:])
            latents = {k: interleave(v, v) for k, v in per_step.items()}
            latents["is_obs"] = interleave(
                torch.ones_like(here, dtype=torch.bool), torch.zeros_like(here, dtype=torch.bool)
            )
            latents["visited_before"] = interleave(torch.zeros_like(seen), seen)
        else:
            inputs, targets = obs[:, :-1], obs[:, 1:]
            latents = dict(per_step)
            latents["visited_before"] = seen
            latents["is_obs"] = torch.ones_like(here, dtype=torch.bool)
        latents["pos_xy"] = torch.stack(
            [latents["pos"].float(), torch.zeros(latents["pos"].shape)], -1
        )
        latents["env_id"] = env_id[:, None].expand(-1, self.seq_len).clone()
        return Batch(inputs, targets, latents)

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """accuracy, revisit_accuracy (the next position was seen before, so its symbol is
        known) and first_visit_accuracy (chance: 1 / n_symbols), as (sum, count)."""
        scored = batch.targets != IGNORE_INDEX
        correct = logits.argmax(-1) == batch.targets
        seen = batch.latents["visited_before"] & scored
        groups = {
            "accuracy": scored,
            "revisit_accuracy": seen,
            "first_visit_accuracy": scored & ~seen,
        }
        return {k: ((correct & m).sum().item(), int(m.sum())) for k, m in groups.items()}

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return (
            ProbeTarget("pos", "regression", at="is_obs", spatial=True),
            ProbeTarget("travel", "classification", at="is_obs", n_classes=2),
        )

    def rate_maps(self) -> tuple[TrackMaps, ...]:
        return (TrackMaps(self.config.n_positions, at="is_obs"),)

    def environment_maps(self) -> tuple[EnvironmentMaps, ...]:
        return (EnvironmentMaps("pos", self.config.n_positions, at="is_obs"),)

    def transition_matrix(self) -> torch.Tensor:
        """[2 n, 2 n] float64 row-stochastic transitions between the states (position p,
        heading h) of :func:`directed_walk`, state index ``2 p + (h < 0)``, where h is the
        heading of the move made from p (after turning at an end of an open track)."""
        c, n = self.config, self.config.n_positions
        T = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
        p_stay = 1 - c.p_forward - c.p_backward
        for p in range(n):
            for h in (1, -1):
                for rel, prob in ((1, c.p_forward), (-1, c.p_backward), (0, p_stay)):
                    new = p + rel * h
                    if c.circular:
                        new %= n
                    elif not 0 <= new < n:
                        new = p  # a backward step into the end: stay
                    turn = not c.circular and ((new == n - 1 and h == 1) or (new == 0 and h == -1))
                    h_next = -h if turn else h
                    T[2 * p + (h < 0), 2 * new + (h_next < 0)] += prob
        return T
