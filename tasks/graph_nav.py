"""Graph navigation, TEM-style (Whittington et al. 2020, 2022).

An agent random-walks on a grid graph. Every environment shares the graph but draws a fresh
sensory symbol for each node from ``n_symbols`` (symbols repeat: aliasing). The sequence
interleaves observation and action tokens

    obs_0, act_0, obs_1, act_1, ..., obs_{T-1}, act_{T-1}

and the model predicts, at each action token, the observation it will see next. Because
the symbols are new in every environment, the only way to predict better than chance is
to remember what was seen where and to know how actions move you on the graph: arriving
at an already-visited node through a never-taken edge (*zero-shot link inference*) can
only be predicted by a model that has learned the graph's structure.

Topologies (config ``topology``):

* ``"square"``: 4-connected ``width x height`` grid. Token ids: ``0..n_symbols-1`` are
  observations, ``n_symbols + a`` is action ``a`` (0 north (+y), 1 east (+x), 2 south,
  3 west, 4 stay).
* ``"hex"``: 6-connected hexagonal grid, ``width`` nodes per row, ``height`` rows, in
  "odd-r" offset layout (odd rows shifted right by half a step); node ``(col, row)`` sits at
  ``x = col + 0.5 * (row % 2)``, ``y = row * sqrt(3) / 2`` so every edge has length 1.
  Action ``a`` moves by the unit vector at angle ``60 * a`` degrees (0 E, 1 NE, 2 NW, 3 W,
  4 SW, 5 SE), 6 stays. Registered also as task ``graph_nav_hex`` (same task, hex default).

Layouts (config ``layout``): ``"open"``, or ``"two_rooms"``: a barrier splits the grid into
a left and a right room (columns ``< width // 2`` and the rest) joined by a one-row door at
row ``door_row`` (default ``height // 2``). Extra blocked edges can be listed in ``walls``
as ``(col1, row1, col2, row2)`` between adjacent nodes (grid indices, both topologies).

Nodes are numbered ``node = row * width + col`` in both topologies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tasks.base import (
    IGNORE_INDEX,
    Batch,
    Curve,
    Task,
    accuracy_by,
    environment_of,
    label_environments,
)
from tasks.targets import EnvironmentMaps, GraphMaps, ProbeTarget

ACTION_NAMES = ("north", "east", "south", "west", "stay")
ACTION_DXY = torch.tensor([[0, 1], [1, 0], [0, -1], [-1, 0], [0, 0]])  # [action, xy]
HEX_ACTION_NAMES = ("east", "northeast", "northwest", "west", "southwest", "southeast", "stay")
HEX_ACTION_DXY = torch.tensor(
    [[math.cos(math.pi / 3 * a), math.sin(math.pi / 3 * a)] for a in range(6)] + [[0.0, 0.0]]
)  # [action, xy] float
TOPOLOGIES = ("square", "hex")
LAYOUTS = ("open", "two_rooms")
FRAC_BINS = 10
"""Bins of the fraction of nodes visited in :meth:`GraphNavTask.curves`."""
MAX_LOOP = 32
"""Loop lengths (steps since the last visit) from this on share the last curve point."""


def cell_xy(col: float, row: float, topology: str) -> tuple[float, float]:
    """Cartesian position of grid cell ``(col, row)``: edges have length 1 in both grids."""
    if topology == "hex":
        return col + 0.5 * (row % 2), row * math.sqrt(3) / 2
    return float(col), float(row)


@dataclass
class GraphNavConfig:
    width: int = 5
    """Nodes along x (per row)."""
    height: int = 5
    """Nodes along y (rows)."""
    n_symbols: int = 16
    """Size of the sensory alphabet; chance accuracy is 1 / n_symbols."""
    n_steps: int = 64
    """Observations per walk; the sequence has 2 * n_steps tokens."""
    allow_stay: bool = False
    """Add an action that stays in place."""
    walls: tuple[tuple[int, int, int, int], ...] = ()
    """Blocked edges, each ``(x1, y1, x2, y2)`` between two adjacent nodes (grid indices)."""
    topology: str = "square"
    """``"square"`` (4-connected) or ``"hex"`` (6-connected)."""
    layout: str = "open"
    """``"open"`` or ``"two_rooms"`` (left and right room joined by a door)."""
    door_row: int | None = None
    """Row of the door in the ``two_rooms`` layout (default ``height // 2``)."""

    def __post_init__(self):
        if self.width < 2 or self.height < 2:
            raise ValueError(f"grid must be at least 2x2, got {self.width}x{self.height}")
        if self.n_symbols < 2 or self.n_steps < 2:
            raise ValueError("n_symbols and n_steps must be at least 2")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.topology!r}; valid: {list(TOPOLOGIES)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; valid: {list(LAYOUTS)}")
        if self.layout == "two_rooms" and self.width < 4:
            raise ValueError(f"the two_rooms layout needs width >= 4, got {self.width}")
        if self.door_row is not None and not 0 <= self.door_row < self.height:
            raise ValueError(f"door_row {self.door_row} is outside rows 0..{self.height - 1}")
        self.walls = tuple(tuple(int(v) for v in w) for w in self.walls)  # JSON gives lists
        for wall in self.walls:
            if len(wall) != 4:
                raise ValueError(f"a wall is (x1, y1, x2, y2) between adjacent nodes, got {wall}")
            (ax, ay), (bx, by) = (
                cell_xy(*wall[:2], self.topology),
                cell_xy(*wall[2:], self.topology),
            )
            if abs(math.hypot(ax - bx, ay - by) - 1) > 1e-6:
                raise ValueError(f"a wall is (x1, y1, x2, y2) between adjacent nodes, got {wall}")


class Lattice:
    """A grid graph: ``node_xy`` [n_nodes, 2] positions, ``next_node`` [n_nodes, n_actions]
    destination of each action (-1 where blocked or off the grid)."""

    width: int
    height: int
    n_nodes: int
    n_actions: int
    node_xy: torch.Tensor
    next_node: torch.Tensor

    def _block(self, walls) -> None:
        for x1, y1, x2, y2 in walls:
            a, b = y1 * self.width + x1, y2 * self.width + x2
            self.next_node[a][self.next_node[a] == b] = -1
            self.next_node[b][self.next_node[b] == a] = -1

    def edges(self) -> torch.Tensor:
        """Open undirected edges [n_edges, 2] (src < dst)."""
        src = torch.arange(self.n_nodes)[:, None].expand_as(self.next_node)
        keep = (self.next_node > src) & (self.next_node >= 0)
        return torch.stack([src[keep], self.next_node[keep]], 1)

    def walk(self, n_steps: int, batch: int, generator: torch.Generator):
        """Uniform random walks over the allowed actions.

        Returns nodes [batch, n_steps + 1] and actions [batch, n_steps] (int64).

        Each step draws ``k`` uniform in ``0..K-1`` with ``K = lcm(1..n_actions)``, which
        every node's number of open actions divides, and a table maps (node, k) to the
        action and the next node: exactly uniform, and one gather per step.
        """
        valid = self.next_node >= 0  # [n_nodes, n_actions]
        K = math.lcm(*range(1, self.n_actions + 1))
        rank = (valid.long().cumsum(1) - 1).clamp(min=0)  # i-th open action of each node
        degree = valid.sum(1, keepdim=True)  # [n_nodes, 1]
        slot = torch.arange(K)[None] * degree // K  # [n_nodes, K]: which open action
        action_table = (rank[:, None, :] == slot[:, :, None]) & valid[:, None, :]
        action_table = action_table.float().argmax(-1)  # [n_nodes, K]
        dest_flat = self.next_node.gather(1, action_table).flatten()
        node = torch.randint(self.n_nodes, (batch,), generator=generator)
        k = torch.randint(K, (batch, n_steps), generator=generator)
        nodes = torch.empty(batch, n_steps + 1, dtype=torch.long)
        nodes[:, 0] = node
        for t in range(n_steps):
            node = dest_flat[node * K + k[:, t]]
            nodes[:, t + 1] = node
        actions = action_table.flatten()[nodes[:, :-1] * K + k]
        return nodes, actions


class SquareGrid(Lattice):
    """A 4-connected ``width x height`` grid graph, optionally with blocked edges.

    node_xy:   [n_nodes, 2] integer (x, y) of each node; nodes are numbered
               ``node = y * width + x``.
    next_node: [n_nodes, n_actions] destination of each action, -1 where blocked.
    """

    def __init__(self, width: int, height: int, allow_stay: bool = False, walls=()):
        self.width, self.height = width, height
        self.n_actions = 5 if allow_stay else 4
        self.action_dxy = ACTION_DXY[: self.n_actions].float()
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        self.node_xy = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # [n_nodes, 2]
        self.n_nodes = width * height
        dest = self.node_xy[:, None, :] + ACTION_DXY[None, : self.n_actions, :]
        size = torch.tensor([width, height])
        inside = ((dest >= 0) & (dest < size)).all(-1)
        self.next_node = torch.where(inside, dest[..., 1] * width + dest[..., 0], -1)
        self._block(walls)


class HexGrid(Lattice):
    """A 6-connected hexagonal grid (odd-r offset layout), optionally with blocked edges.

    node_xy: [n_nodes, 2] float Cartesian positions (unit edge length); see module doc.
    """

    def __init__(self, width: int, height: int, allow_stay: bool = False, walls=()):
        self.width, self.height = width, height
        self.n_actions = 7 if allow_stay else 6
        self.action_dxy = HEX_ACTION_DXY[: self.n_actions]
        self.n_nodes = width * height
        self.node_xy = torch.tensor(
            [cell_xy(n % width, n // width, "hex") for n in range(self.n_nodes)]
        )
        dest = self.node_xy[:, None, :] + self.action_dxy[None]  # [n_nodes, n_actions, 2]
        # exact differences (torch.cdist's matmul shortcut loses ~1e-3 in float32)
        dist = (dest[:, :, None, :] - self.node_xy[None, None]).norm(dim=-1)
        nearest = dist.min(-1)
        self.next_node = torch.where(nearest.values < 1e-4, nearest.indices, -1)
        self._block(walls)


def two_rooms_walls(config: GraphNavConfig) -> list[tuple[int, int, int, int]]:
    """Blocked edges of the two-rooms layout: every edge crossing the vertical line between
    column ``width // 2 - 1`` and ``width // 2`` except those touching the door row."""
    c = config
    door = c.height // 2 if c.door_row is None else c.door_row
    cls = HexGrid if c.topology == "hex" else SquareGrid
    open_grid = cls(c.width, c.height)
    x0 = c.width // 2 - 0.25  # the barrier line, between the two rooms' node columns
    walls = []
    for a, b in open_grid.edges().tolist():
        xa, xb = open_grid.node_xy[a, 0].item(), open_grid.node_xy[b, 0].item()
        ra, rb = a // c.width, b // c.width
        if (xa - x0) * (xb - x0) < 0 and door not in (ra, rb):
            walls.append((a % c.width, ra, b % c.width, rb))
    return walls


def build_graph(config: GraphNavConfig) -> Lattice:
    """The graph of a config: topology, layout and walls applied."""
    c = config
    walls = list(c.walls) + (two_rooms_walls(c) if c.layout == "two_rooms" else [])
    cls = HexGrid if c.topology == "hex" else SquareGrid
    return cls(c.width, c.height, c.allow_stay, walls)


def link_inference_flags(nodes: torch.Tensor, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which moves can be predicted only by inference over the graph's structure.

    nodes [batch, T + 1] -> (zero_shot, visited_before), both [batch, T]:
    ``visited_before[b, t]``: the node reached by move t was seen before;
    ``zero_shot[b, t]``: it was seen before, but the edge between node_t and node_{t+1}
    was never traversed in either direction, and the move goes somewhere (not "stay").
    Edges count as undirected so that backtracking (east then west), which needs only the
    inverse of the last action, is not mistaken for link inference: a zero-shot move
    closes a loop and can be predicted only by integrating the path (Whittington 2020).
    """
    src, dst = nodes[:, :-1], nodes[:, 1:]
    seen = occurred_before(nodes)[:, 1:]
    edge = torch.minimum(src, dst) * n_nodes + torch.maximum(src, dst)  # undirected edge id
    zero_shot = seen & ~occurred_before(edge) & (dst != src)
    return zero_shot, seen


def occurred_before(ids: torch.Tensor) -> torch.Tensor:
    """[batch, L] ids -> [batch, L] bool: the same id occurs earlier in its row.

    Vectorised by a sort on ``(id, position)``: within each run of equal ids only the first
    (earliest) is new.
    """
    L = ids.shape[1]
    key = ids * L + torch.arange(L, device=ids.device)
    sorted_key, order = key.sort(1)
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = sorted_key[:, 1:] // L == sorted_key[:, :-1] // L
    return torch.empty_like(repeat).scatter_(1, order, repeat)


def steps_since_last_visit(nodes: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """nodes [batch, T + 1] -> [batch, T]: for the node reached by move t, the number of
    moves since the walk was last there (the length of the loop the move closes), -1 on a
    first visit."""
    batch, length = nodes.shape
    last = torch.full((batch, n_nodes), -1, dtype=torch.long)
    rows = torch.arange(batch)
    last[rows, nodes[:, 0]] = 0
    gaps = torch.empty(batch, length - 1, dtype=torch.long)
    for t in range(1, length):
        before = last[rows, nodes[:, t]]
        gaps[:, t - 1] = torch.where(before >= 0, t - before, -1)
        last[rows, nodes[:, t]] = t
    return gaps


def interleave(on_obs: torch.Tensor, on_act: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] twice -> [B, 2T, ...] alternating (obs_0, act_0, obs_1, ...)."""
    return torch.stack([on_obs, on_act], dim=2).flatten(1, 2)


class GraphNavTask(Task):
    """Next-observation prediction on random walks in aliased grid environments.

    Latents (all [batch, 2 * n_steps], per token):
      pos_xy [.., 2] float (position of the agent when the token is shown), node, env_id,
      step (walk step t), is_obs (observation token or action token), frac_visited (float:
      distinct nodes seen so far, including the current one, / n_nodes), and, at action
      tokens only (False elsewhere): zero_shot, visited_before (see
      :func:`link_inference_flags`), both about the node the move arrives at, and
      loop_length (moves since the arrival node was last visited; -1 on first visits and
      at observation tokens). Batches of :meth:`sample_environments` (several walks in each
      of several environments: the same graph, symbols redrawn) add env and walk.
    """

    name = "graph_nav"

    def __init__(self, config: GraphNavConfig | None = None):
        self.config = config or GraphNavConfig()
        c = self.config
        self.graph = build_graph(c)
        self.n_actions = self.graph.n_actions
        self.d_vocab_in = c.n_symbols + self.n_actions
        self.d_vocab_out = c.n_symbols
        self.seq_len = 2 * c.n_steps
        self.chance_accuracy = 1 / c.n_symbols

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        nodes, actions = self.graph.walk(self.config.n_steps, batch_size, generator)
        symbols, env_id = self._draw_environments(batch_size, generator)
        return self._walk_batch(nodes, actions, symbols, env_id)

    def sample_environments(
        self, n_envs: int, walks_per_env: int, generator: torch.Generator
    ) -> Batch:
        env = environment_of(n_envs, walks_per_env)
        nodes, actions = self.graph.walk(self.config.n_steps, len(env), generator)
        symbols, env_id = self._draw_environments(n_envs, generator)
        batch = self._walk_batch(nodes, actions, symbols[env], env_id[env])
        return label_environments(batch, walks_per_env)

    def _draw_environments(self, n: int, generator: torch.Generator):
        """``n`` environments: symbols [n, n_nodes] (one per node) and env_id [n]."""
        symbols = torch.randint(self.config.n_symbols, (n, self.graph.n_nodes), generator=generator)
        return symbols, torch.randint(2**62, (n,), generator=generator)

    def _walk_batch(self, nodes, actions, symbols, env_id) -> Batch:
        """The batch of walks nodes [B, T+1] and actions [B, T] in environments symbols
        [B, n_nodes] and env_id [B] (one per walk)."""
        c, g = self.config, self.graph
        batch_size = len(nodes)
        obs = symbols.gather(1, nodes)  # [B, T+1]
        zero_shot, seen = link_inference_flags(nodes, g.n_nodes)
        loop = steps_since_last_visit(nodes, g.n_nodes)
        # distinct nodes among nodes_0..nodes_t: the start plus every first arrival before t
        n_seen = 1 + torch.cat([torch.zeros(batch_size, 1), (~seen[:, :-1]).float().cumsum(1)], 1)
        frac = n_seen / g.n_nodes  # [B, T]

        here = nodes[:, :-1]
        no = torch.zeros_like(zero_shot)
        inputs = interleave(obs[:, :-1], c.n_symbols + actions)
        targets = interleave(torch.full_like(actions, IGNORE_INDEX), obs[:, 1:])
        steps = torch.arange(c.n_steps).expand(batch_size, -1)
        xy = g.node_xy.float()[here]
        latents = {
            "node": interleave(here, here),
            "pos_xy": interleave(xy, xy),
            "env_id": env_id[:, None].expand(-1, self.seq_len).clone(),
            "step": interleave(steps, steps),
            "is_obs": interleave(torch.ones_like(no), no),
            "frac_visited": interleave(frac, frac),
            "zero_shot": interleave(no, zero_shot),
            "visited_before": interleave(no, seen),
            "loop_length": interleave(torch.full_like(loop, -1), loop),
        }
        return Batch(inputs, targets, latents)

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return (ProbeTarget("pos_xy", "regression", at="is_obs", spatial=True),)

    def rate_maps(self) -> tuple[GraphMaps, ...]:
        xy = tuple(tuple(float(v) for v in row) for row in self.graph.node_xy.tolist())
        return (GraphMaps(node_xy=xy, at="is_obs"),)

    def environment_maps(self) -> tuple[EnvironmentMaps, ...]:
        return (EnvironmentMaps("node", self.graph.n_nodes, at="is_obs"),)

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """accuracy (all moves), zero_shot_accuracy (link inference), first_visit_accuracy
        (new nodes: chance is 1/n_symbols) and revisit_accuracy, as (sum, count)."""
        scored = batch.targets != IGNORE_INDEX
        correct = logits.argmax(-1) == batch.targets
        zero_shot, seen = batch.latents["zero_shot"], batch.latents["visited_before"]
        groups = {
            "accuracy": scored,
            "zero_shot_accuracy": zero_shot,
            "first_visit_accuracy": scored & ~seen,
            "revisit_accuracy": seen,
        }
        return {k: ((correct & m).sum().item(), int(m.sum())) for k, m in groups.items()}

    @torch.no_grad()
    def curves(self, logits: torch.Tensor, batch: Batch) -> dict[str, Curve]:
        """Accuracy of each move (the prediction at its action token) against the fraction
        of nodes visited (Whittington et al. 2020, Fig. 3), for zero-shot moves, revisits
        and all moves; and zero-shot accuracy against the length of the loop the move
        closes. See :func:`move_curves`."""
        correct = (logits.argmax(-1) == batch.targets)[:, 1::2].float()
        return move_curves(correct, batch.latents)


def move_curves(correct: torch.Tensor, latents: dict[str, torch.Tensor]) -> dict[str, Curve]:
    """The curves of :meth:`GraphNavTask.curves` from per-move scores ``correct``
    [batch, T] (1/0, or an expected accuracy in [0, 1] for the memory agents)."""
    frac = latents["frac_visited"][:, 1::2]
    frac_bin = (frac.float() * FRAC_BINS).long().clamp(0, FRAC_BINS - 1)
    centres = (torch.arange(FRAC_BINS) + 0.5) / FRAC_BINS
    zero_shot, seen = latents["zero_shot"][:, 1::2], latents["visited_before"][:, 1::2]
    out = {}
    for name, mask in (("zero_shot", zero_shot), ("revisit", seen), ("all", None)):
        key = frac_bin if mask is None else torch.where(mask, frac_bin, -1)
        out[f"{name}_accuracy_by_frac_visited"] = accuracy_by(correct, key, FRAC_BINS, centres)
    loop = latents["loop_length"][:, 1::2].clamp(max=MAX_LOOP)
    out["zero_shot_accuracy_by_loop_length"] = accuracy_by(
        correct, torch.where(zero_shot, loop, -1), MAX_LOOP + 1
    )
    return out


def memory_agent_accuracy(batch: Batch, n_symbols: int, agent: str) -> torch.Tensor:
    """Expected next-observation accuracy [batch, T] of Whittington et al. (2020)'s memory
    baselines, which know which node they are on but not the graph's structure:

    * ``"node"``: remembers the symbol of every node it has seen, so predicts every revisit
      (zero-shot or not) and guesses on first visits: what an agent that has learned the
      structure perfectly does (the ceiling).
    * ``"edge"``: remembers the symbol at the end of every directed transition (node,
      action) it has taken, so predicts only a repeat of a transition it has made; anything
      else, backtracking and every zero-shot move included, is a guess.

    A guess scores its expectation, 1 / n_symbols.
    """
    if agent not in ("node", "edge"):
        raise ValueError(f"unknown memory agent {agent!r}; valid: 'node', 'edge'")
    if agent == "node":
        known = batch.latents["visited_before"][:, 1::2]
    else:
        node, action = batch.latents["node"][:, 1::2], batch.inputs[:, 1::2]
        known = occurred_before(node * (int(action.max()) + 1) + action)
    return torch.where(known, 1.0, 1.0 / n_symbols)


@dataclass
class GraphNavHexConfig(GraphNavConfig):
    """:class:`GraphNavConfig` with the hexagonal topology as default."""

    topology: str = "hex"


class GraphNavHexTask(GraphNavTask):
    """:class:`GraphNavTask` on a 6-connected hexagonal grid (task ``graph_nav_hex``)."""

    name = "graph_nav_hex"

    def __init__(self, config: GraphNavConfig | None = None):
        super().__init__(config or GraphNavHexConfig())
