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

Token ids: ``0..n_symbols-1`` are observations, ``n_symbols + a`` is action ``a``
(0 north (+y), 1 east (+x), 2 south, 3 west, 4 stay).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.base import IGNORE_INDEX, Batch, Task

ACTION_NAMES = ("north", "east", "south", "west", "stay")
ACTION_DXY = torch.tensor([[0, 1], [1, 0], [0, -1], [-1, 0], [0, 0]])  # [action, xy]


@dataclass
class GraphNavConfig:
    width: int = 5
    """Nodes along x."""
    height: int = 5
    """Nodes along y."""
    n_symbols: int = 16
    """Size of the sensory alphabet; chance accuracy is 1 / n_symbols."""
    n_steps: int = 64
    """Observations per walk; the sequence has 2 * n_steps tokens."""
    allow_stay: bool = False
    """Add a fifth action that stays in place."""
    walls: tuple[tuple[int, int, int, int], ...] = ()
    """Blocked edges, each ``(x1, y1, x2, y2)`` between two adjacent nodes."""

    def __post_init__(self):
        if self.width < 2 or self.height < 2:
            raise ValueError(f"grid must be at least 2x2, got {self.width}x{self.height}")
        if self.n_symbols < 2 or self.n_steps < 2:
            raise ValueError("n_symbols and n_steps must be at least 2")
        self.walls = tuple(tuple(int(v) for v in w) for w in self.walls)
        for wall in self.walls:
            if len(wall) != 4 or abs(wall[0] - wall[2]) + abs(wall[1] - wall[3]) != 1:
                raise ValueError(f"a wall is (x1, y1, x2, y2) between adjacent nodes, got {wall}")


class SquareGrid:
    """A 4-connected ``width x height`` grid graph, optionally with blocked edges.

    node_xy:   [n_nodes, 2] integer (x, y) of each node; nodes are numbered
               ``node = y * width + x``.
    next_node: [n_nodes, n_actions] destination of each action, -1 where blocked.
    """

    def __init__(self, width: int, height: int, allow_stay: bool = False, walls=()):
        self.width, self.height = width, height
        self.n_actions = 5 if allow_stay else 4
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        self.node_xy = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # [n_nodes, 2]
        self.n_nodes = width * height
        dest = self.node_xy[:, None, :] + ACTION_DXY[None, : self.n_actions, :]
        size = torch.tensor([width, height])
        inside = ((dest >= 0) & (dest < size)).all(-1)
        next_node = torch.where(inside, dest[..., 1] * width + dest[..., 0], -1)
        for x1, y1, x2, y2 in walls:
            for (ax, ay), (bx, by) in (((x1, y1), (x2, y2)), ((x2, y2), (x1, y1))):
                a = ay * width + ax
                next_node[a][next_node[a] == by * width + bx] = -1
        self.next_node = next_node

    def walk(self, n_steps: int, batch: int, generator: torch.Generator):
        """Uniform random walks over the allowed actions.

        Returns nodes [batch, n_steps + 1] and actions [batch, n_steps] (int64).
        """
        valid = (self.next_node >= 0).float()  # [n_nodes, n_actions]
        node = torch.randint(self.n_nodes, (batch,), generator=generator)
        nodes, actions = [node], []
        for _ in range(n_steps):
            action = torch.multinomial(valid[node], 1, generator=generator).squeeze(1)
            node = self.next_node[node, action]
            nodes.append(node)
            actions.append(action)
        return torch.stack(nodes, 1), torch.stack(actions, 1)


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
    batch, n_moves = nodes.shape[0], nodes.shape[1] - 1
    rows = torch.arange(batch)
    visited = torch.zeros(batch, n_nodes, dtype=torch.bool)
    traversed = torch.zeros(batch, n_nodes, n_nodes, dtype=torch.bool)
    visited[rows, nodes[:, 0]] = True
    zero_shot = torch.zeros(batch, n_moves, dtype=torch.bool)
    seen = torch.zeros(batch, n_moves, dtype=torch.bool)
    for t in range(n_moves):
        src, dst = nodes[:, t], nodes[:, t + 1]
        seen[:, t] = visited[rows, dst]
        zero_shot[:, t] = seen[:, t] & ~traversed[rows, src, dst] & (dst != src)
        traversed[rows, src, dst] = True
        traversed[rows, dst, src] = True
        visited[rows, dst] = True
    return zero_shot, seen


class GraphNavTask(Task):
    """Next-observation prediction on random walks in aliased grid environments.

    Latents (all [batch, 2 * n_steps], per token):
      pos_xy [.., 2] float (position of the agent when the token is shown), node, env_id,
      step (walk step t), is_obs (observation token or action token), and, at action
      tokens only (False elsewhere): zero_shot, visited_before (see
      :func:`link_inference_flags`), both about the node the move arrives at.
    """

    name = "graph_nav"

    def __init__(self, config: GraphNavConfig | None = None):
        self.config = config or GraphNavConfig()
        c = self.config
        self.graph = SquareGrid(c.width, c.height, c.allow_stay, c.walls)
        self.n_actions = self.graph.n_actions
        self.d_vocab_in = c.n_symbols + self.n_actions
        self.d_vocab_out = c.n_symbols
        self.seq_len = 2 * c.n_steps

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c, g = self.config, self.graph
        nodes, actions = g.walk(c.n_steps, batch_size, generator)  # [B, T+1], [B, T]
        symbols = torch.randint(c.n_symbols, (batch_size, g.n_nodes), generator=generator)
        env_id = torch.randint(2**62, (batch_size,), generator=generator)
        obs = symbols.gather(1, nodes)  # [B, T+1]
        zero_shot, seen = link_inference_flags(nodes, g.n_nodes)

        def interleave(on_obs: torch.Tensor, on_act: torch.Tensor) -> torch.Tensor:
            return torch.stack([on_obs, on_act], dim=2).flatten(1, 2)  # [B, 2T, ...]

        here = nodes[:, :-1]
        no = torch.zeros_like(zero_shot)
        inputs = interleave(obs[:, :-1], c.n_symbols + actions)
        targets = interleave(torch.full_like(actions, IGNORE_INDEX), obs[:, 1:])
        steps = torch.arange(c.n_steps).expand(batch_size, -1)
        latents = {
            "node": interleave(here, here),
            "pos_xy": interleave(g.node_xy[here], g.node_xy[here]).float(),
            "env_id": env_id[:, None].expand(-1, self.seq_len).clone(),
            "step": interleave(steps, steps),
            "is_obs": interleave(torch.ones_like(no), no),
            "zero_shot": interleave(no, zero_shot),
            "visited_before": interleave(no, seen),
        }
        return Batch(inputs, targets, latents)

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
