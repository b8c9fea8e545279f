"""Continuous path integration in a 2D box (Sorscher et al. 2019/2023; Schaeffer et al. 2022).

Smooth random trajectories in the square box ``[-box/2, box/2]^2`` with the rotational-
velocity model of Sorscher et al.'s trajectory generator (as in RatInABox): at each step of
``dt`` seconds the heading turns by ``dt * N(0, sigma_rot)``, the speed is drawn from a
Rayleigh distribution of scale ``speed_scale``, and near a wall (closer than
``border_region``, heading into it) the agent turns to run along the wall and slows to a
quarter speed. Positions are clamped to the box, and the velocity given as input is the
displacement actually made (so integrating it reproduces the positions exactly).

Inputs: float [batch, T, d_input]. Features 0-1 (``velocity_input="cartesian"``) are the
velocity ``(v cos h, v sin h)`` in m/s of the move made at step t (from ``pos_xy[t]`` to
``pos_xy[t+1]``; ``h`` is the direction actually moved, which differs from the agent's
intended heading only when the clamp at a wall bit); with ``"polar"`` features 0-2 are
``(v, cos h, sin h)``. The initial position is told at step 0 only, in the extra features
that follow (zero at later steps): the place-cell code of the start
(``init_input="place_cells"``, DoS profile for the DoS readout, else Gaussian: what Sorscher
et al. feed through a linear encoder into the RNN's initial state), its ``(x, y)``
(``"xy"``), or nothing (``"none"``: the model must infer position from wall contacts).

Targets: float [batch, T, d_vocab_out], the readout of the position *after* the move,
``pos_xy[t+1]``:
  * ``"dos"``: ``n_place_cells`` place cells at random centres (fixed per task by
    ``place_cell_seed``) with a difference-of-softmaxes profile
    ``softmax(-d^2 / 2 sigma^2) - softmax(-d^2 / 2 (s sigma)^2)`` over cells (``s`` =
    ``surround_scale``), shifted to be >= 0 and normalised to sum to 1 (Sorscher et al.);
    loss = cross-entropy between this distribution and ``softmax(logits)``.
  * ``"gaussian"``: the same without the surround (Schaeffer et al.'s control that removes
    grid cells); same loss.
  * ``"cartesian"``: the position ``(x, y)`` itself, ``d_vocab_out = 2``, MSE loss
    (Schaeffer et al.'s Cartesian readout control).
Metric ``pos_error``: metres between the true position and the decoded one (the mean of the
centres of the ``decode_top_k`` most active predicted cells, as Sorscher et al., or the
predicted ``(x, y)`` for the Cartesian readout).

Latents ([batch, T]): ``pos_xy`` [.., 2] (position at the start of step t, where the
velocity input applies), ``heading`` (radians, of the move), ``speed`` (m/s), ``step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tasks.base import Batch, Task
from tasks.reference import Reference
from tasks.targets import ArenaMaps, ProbeTarget

READOUTS = ("dos", "gaussian", "cartesian")


@dataclass
class PathIntegrationConfig:
    n_steps: int = 20
    """Velocity inputs per trajectory (Sorscher et al.: 20)."""
    box_size: float = 2.2
    """Side of the square box in metres, centred on the origin."""
    dt: float = 0.02
    """Seconds per step."""
    sigma_rot: float = 11.52
    """Standard deviation of the rotational velocity (rad/s)."""
    speed_scale: float = 0.13 * 2 * math.pi
    """Rayleigh scale of the forward speed (m/s)."""
    border_region: float = 0.03
    """Distance (m) from a wall at which the agent turns away and slows down."""
    n_place_cells: int = 64
    """Readout cells (Sorscher et al. used 512; fewer keep the smoke-sized models small)."""
    place_cell_width: float = 0.12
    """sigma of the place-cell tuning (m)."""
    surround_scale: float = 2.0
    """Width of the DoS surround relative to the centre."""
    readout: str = "dos"
    """``"dos"``, ``"gaussian"`` or ``"cartesian"``."""
    velocity_input: str = "cartesian"
    """``"cartesian"`` (vx, vy) or ``"polar"`` (speed, cos heading, sin heading)."""
    init_input: str = "place_cells"
    """How step 0 tells the start: ``"place_cells"``, ``"xy"`` or ``"none"``."""
    place_cell_seed: int = 0
    """Seed of the place-cell centres (fixed per task, shared by all batches)."""
    decode_top_k: int = 3
    """Cells averaged to decode position from the predicted population."""
    map_bins: int = 20
    """Bins per side of the census's rate maps."""

    def __post_init__(self):
        if self.readout not in READOUTS:
            raise ValueError(f"unknown readout {self.readout!r}; valid: {list(READOUTS)}")
        if self.velocity_input not in ("cartesian", "polar"):
            raise ValueError(
                f"velocity_input must be 'cartesian' or 'polar', got {self.velocity_input!r}"
            )
        if self.init_input not in ("place_cells", "xy", "none"):
            raise ValueError(
                f"init_input must be 'place_cells', 'xy' or 'none', got {self.init_input!r}"
            )
        if self.n_steps < 1 or self.n_place_cells < 1 or self.box_size <= 0 or self.dt <= 0:
            raise ValueError("n_steps, n_place_cells, box_size and dt must be positive")
        if self.map_bins < 4:
            raise ValueError(f"map_bins must be at least 4, got {self.map_bins}")


def smooth_trajectories(config: PathIntegrationConfig, batch: int, generator: torch.Generator):
    """Positions [B, T+1, 2], headings [B, T] and speeds [B, T] (of the move at step t)."""
    c = config
    half = c.box_size / 2
    T = c.n_steps
    pos = (torch.rand(batch, 2, generator=generator) * 2 - 1) * half
    hd = torch.rand(batch, generator=generator) * 2 * math.pi
    turn_noise = torch.randn(batch, T, generator=generator) * c.sigma_rot
    # Rayleigh(scale) by inverse CDF; 1 - u avoids log(0)
    speed = c.speed_scale * torch.sqrt(-2 * torch.log1p(-torch.rand(batch, T, generator=generator)))
    wall_angles = torch.arange(4) * (math.pi / 2)  # normals: +x, +y, -x, -y
    positions = torch.empty(batch, T + 1, 2)
    headings = torch.empty(batch, T)
    speeds = torch.empty(batch, T)
    positions[:, 0] = pos
    for t in range(T):
        dists = torch.stack(
            [half - pos[:, 0], half - pos[:, 1], half + pos[:, 0], half + pos[:, 1]], 1
        )
        d_wall, nearest = dists.min(1)
        a_wall = torch.remainder(hd - wall_angles[nearest] + math.pi, 2 * math.pi) - math.pi
        near = (d_wall < c.border_region) & (a_wall.abs() < math.pi / 2)
        v = torch.where(near, 0.25 * speed[:, t], speed[:, t])
        turn = torch.where(near, torch.sign(a_wall) * (math.pi / 2 - a_wall.abs()), 0.0)
        step = v[:, None] * c.dt * torch.stack([torch.cos(hd), torch.sin(hd)], 1)
        new = (pos + step).clamp(-half, half)
        disp = new - pos  # differs from `step` only where the clamp bit
        dist = disp.norm(dim=1)
        speeds[:, t] = dist / c.dt
        moved_dir = torch.atan2(disp[:, 1], disp[:, 0])
        headings[:, t] = torch.remainder(torch.where(dist > 0, moved_dir, hd), 2 * math.pi)
        pos = new
        positions[:, t + 1] = pos
        hd = hd + turn + c.dt * turn_noise[:, t]
    return positions, headings, speeds


def place_cell_activity(
    pos: torch.Tensor, centres: torch.Tensor, sigma: float, surround_scale: float | None
) -> torch.Tensor:
    """Population code of positions [..., 2] -> [..., n_cells], a distribution over cells.

    Difference of softmaxes (surround_scale given) or a softmax of Gaussians (None).
    """
    d2 = ((pos[..., None, :] - centres) ** 2).sum(-1)  # [..., n_cells]
    out = torch.softmax(-d2 / (2 * sigma**2), -1)
    if surround_scale is not None:
        out = out - torch.softmax(-d2 / (2 * (surround_scale * sigma) ** 2), -1)
        out = out - out.min(-1, keepdim=True).values
    return out / out.sum(-1, keepdim=True)


class PathIntegrationTask(Task):
    """Velocity in, place-cell population (or position) out, in a 2D box."""

    name = "path_integration"
    d_vocab_in = None

    def __init__(self, config: PathIntegrationConfig | None = None):
        self.config = config or PathIntegrationConfig()
        c = self.config
        g = torch.Generator().manual_seed(c.place_cell_seed)
        half = c.box_size / 2
        self.centres = (torch.rand(c.n_place_cells, 2, generator=g) * 2 - 1) * half
        n_vel = 2 if c.velocity_input == "cartesian" else 3
        n_init = {"place_cells": c.n_place_cells, "xy": 2, "none": 0}[c.init_input]
        self.n_velocity = n_vel
        """Velocity features; the start cue's (zero after step 0) follow them."""
        self.d_input = n_vel + n_init
        self.d_vocab_out = 2 if c.readout == "cartesian" else c.n_place_cells
        self.seq_len = c.n_steps

    def readout(self, pos: torch.Tensor) -> torch.Tensor:
        """Targets for positions [..., 2]."""
        c = self.config
        if c.readout == "cartesian":
            return pos.clone()
        surround = c.surround_scale if c.readout == "dos" else None
        return place_cell_activity(pos, self.centres, c.place_cell_width, surround)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c = self.config
        positions, headings, speeds = smooth_trajectories(c, batch_size, generator)
        velocity = (positions[:, 1:] - positions[:, :-1]) / c.dt  # [B, T, 2], exact moves
        if c.velocity_input == "cartesian":
            vel_features = velocity
        else:
            vel_features = torch.stack([speeds, torch.cos(headings), torch.sin(headings)], -1)
        init = {
            "place_cells": lambda p: place_cell_activity(
                p,
                self.centres,
                c.place_cell_width,
                c.surround_scale if c.readout == "dos" else None,
            ),
            "xy": lambda p: p,
            "none": lambda p: p[:, :0],
        }[c.init_input](positions[:, 0])
        init_features = torch.zeros(batch_size, c.n_steps, init.shape[-1])
        init_features[:, 0] = init
        inputs = torch.cat([vel_features, init_features], -1)
        latents = {
            "pos_xy": positions[:, :-1].clone(),
            "heading": headings,
            "speed": speeds,
            "step": torch.arange(c.n_steps).expand(batch_size, -1).clone(),
        }
        return Batch(inputs, self.readout(positions[:, 1:]), latents)

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return (
            ProbeTarget("pos_xy", "regression", spatial=True),
            ProbeTarget("heading", "circular"),
        )

    def rate_maps(self) -> tuple[ArenaMaps, ...]:
        half = self.config.box_size / 2
        return (ArenaMaps(extent=((-half, half), (-half, half)), bins=self.config.map_bins),)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.config.readout == "cartesian":
            return ((logits.float() - batch.targets) ** 2).sum(-1).mean()
        return -(batch.targets * torch.log_softmax(logits.float(), -1)).sum(-1).mean()

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Position [..., 2] read from the model's outputs (top-k place-cell centres)."""
        if self.config.readout == "cartesian":
            return logits.float()
        top = logits.topk(min(self.config.decode_top_k, logits.shape[-1]), -1).indices
        return self.centres.to(logits.device)[top].mean(-2)

    def moved_to(self, batch: Batch) -> torch.Tensor:
        """The position [batch, pos, 2] after each move (what the targets read out)."""
        lat = batch.latents
        heading = torch.stack([torch.cos(lat["heading"]), torch.sin(lat["heading"])], -1)
        return lat["pos_xy"] + self.config.dt * lat["speed"][..., None] * heading

    def reference_predictors(self) -> tuple[PositionReadout, ...]:
        """``position_free`` (knows no position) and ``velocity_only`` (knows the current
        input only, so integrates no path): see :class:`PositionReadout`."""
        return (PositionReadout("position_free", self), PositionReadout("velocity_only", self))

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """pos_error: mean distance (m) between decoded and true position after each move."""
        err = (self.decode(logits) - self.moved_to(batch)).norm(dim=-1)
        return {"pos_error": (err.sum().item(), err.numel())}


class PositionReadout(Reference):
    """A reference predictor of path integration: it predicts the position after each move
    from what it sees and emits the task's readout of that position (log-probabilities for
    the place-cell readouts, the position itself for the Cartesian one).

    ``position_free`` sees nothing: it predicts the centre of the box, the point nearest
    the agent on average (the walk is symmetric under the box's symmetries, so the centre
    is the geometric median of its positions). ``velocity_only`` sees the current input:
    the velocity, and at step 0 the start cue (the only step whose input tells position).
    It predicts the position by least squares on the input features, fit separately for
    inputs with and without the start cue.
    """

    fit_targets = 2**16

    def __init__(self, name: str, task: PathIntegrationTask):
        if name not in ("position_free", "velocity_only"):
            raise ValueError(f"unknown predictor {name!r}; valid: 'position_free', 'velocity_only'")
        self.name, self.task = name, task
        if name == "position_free":
            self.fit_targets = 0
        n = task.d_input + 1
        # per group (0: no start cue, 1: start cue), features and a constant -> position;
        # position_free: all 0 (the centre)
        self.weights = torch.zeros(2, n, 2, dtype=torch.float64)
        self.xtx = torch.zeros(2, n, n, dtype=torch.float64)  # normal equations of the fit
        self.xty = torch.zeros(2, n, 2, dtype=torch.float64)

    def features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and a constant [batch, pos, d_input + 1] (float64, CPU) and the group
        [batch, pos] (1 where the start cue is given)."""
        x = batch.inputs.double().cpu()
        start = (x[..., self.task.n_velocity :] != 0).any(-1)
        return torch.cat([x, torch.ones_like(x[..., :1])], -1), start.long()

    def observe(self, task: Task, batch: Batch) -> None:
        """Accumulate the normal equations X'X, X'y of each group (velocity_only)."""
        x, group = self.features(batch)
        y = task.moved_to(batch).double().cpu()
        for g in (0, 1):
            xg, yg = x[group == g], y[group == g]
            self.xtx[g] += xg.T @ xg
            self.xty[g] += xg.T @ yg

    def finish(self) -> None:
        for g in range(2 if self.fit_targets else 0):
            scale = self.xtx[g].diagonal().mean()
            if scale > 0:  # a group never seen (no start cue) keeps weights 0
                ridge = 1e-9 * scale * torch.eye(len(self.xtx[g]), dtype=torch.float64)
                self.weights[g] = torch.linalg.solve(self.xtx[g] + ridge, self.xty[g])

    def __call__(self, batch: Batch) -> torch.Tensor:
        x, group = self.features(batch)
        position = torch.where(group[..., None] == 1, x @ self.weights[1], x @ self.weights[0])
        out = self.task.readout(position.float()).double()
        if self.task.config.readout != "cartesian":
            out = out.clamp_min(1e-12).log()
        return out.to(batch.inputs.device)
