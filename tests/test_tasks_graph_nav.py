import math

import pytest
import torch

from tasks import IGNORE_INDEX, build_task
from tasks.graph_nav import (
    ACTION_DXY,
    GraphNavConfig,
    GraphNavTask,
    HexGrid,
    SquareGrid,
    link_inference_flags,
    memory_agent_accuracy,
    move_curves,
)


def sample(config=None, seed=0, batch=32):
    task = GraphNavTask(config or GraphNavConfig(width=5, height=4, n_steps=40))
    return task, task.sample(batch, torch.Generator().manual_seed(seed))


def test_positions_recomputed_from_actions_match_pos_xy():
    task, batch = sample()
    n_symbols = task.config.n_symbols
    actions = batch.inputs[:, 1::2] - n_symbols  # action tokens sit at odd positions
    pos = batch.latents["pos_xy"][:, 0::2]  # position at each observation token
    integrated = pos[:, :1] + torch.cumsum(ACTION_DXY[actions].float(), 1)
    torch.testing.assert_close(integrated[:, :-1], pos[:, 1:])
    # the observation shown is the environment's symbol at that node, the same on revisits
    for b in range(4):
        obs, nodes = batch.inputs[b, 0::2], batch.latents["node"][b, 0::2]
        for node in nodes.unique():
            assert obs[nodes == node].unique().numel() == 1


def test_targets_are_the_next_observation_at_action_tokens():
    _, batch = sample()
    torch.testing.assert_close(batch.targets[:, 1:-1:2], batch.inputs[:, 2::2])
    assert (batch.targets[:, 0::2] == IGNORE_INDEX).all()


def test_same_seed_same_data_other_seed_other_data():
    _, a = sample(seed=3)
    _, b = sample(seed=3)
    _, c = sample(seed=4)
    assert torch.equal(a.inputs, b.inputs)
    assert all(torch.equal(a.latents[k], b.latents[k]) for k in a.latents)
    assert not torch.equal(a.inputs, c.inputs)


def test_walls_are_never_crossed():
    walls = ((1, 0, 2, 0), (1, 1, 2, 1), (1, 2, 2, 2))  # a barrier with a gap at y = 3
    _, batch = sample(GraphNavConfig(width=4, height=4, n_steps=60, walls=walls), batch=64)
    pos = batch.latents["pos_xy"][:, 0::2]
    crossed = (pos[:, :-1, 0] == 1) & (pos[:, 1:, 0] == 2) | (pos[:, :-1, 0] == 2) & (
        pos[:, 1:, 0] == 1
    )
    assert (pos[:, 1:, 1][crossed] == 3).all()  # only through the gap
    assert crossed.any()


def test_zero_shot_flags_match_a_brute_force_walk():
    task, batch = sample(batch=16)
    nodes = batch.latents["node"][:, 0::2]
    final = task.graph.next_node[nodes[:, -1], batch.inputs[:, -1] - task.config.n_symbols]
    nodes = torch.cat([nodes, final[:, None]], 1)
    zero_shot, seen = link_inference_flags(nodes, task.graph.n_nodes)
    for b in range(16):
        visited, edges = {nodes[b, 0].item()}, set()
        for t in range(nodes.shape[1] - 1):
            src, dst = nodes[b, t].item(), nodes[b, t + 1].item()
            assert seen[b, t] == (dst in visited)
            assert zero_shot[b, t] == (dst in visited and frozenset((src, dst)) not in edges)
            visited.add(dst)
            edges.add(frozenset((src, dst)))
    torch.testing.assert_close(batch.latents["zero_shot"][:, 1::2], zero_shot)
    assert zero_shot.any()


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="unknown task 'maze'; valid tasks"):
        build_task("maze")
    with pytest.raises(ValueError, match=r"unknown task 'graph_nav' config field\(s\) \['size'\]"):
        build_task("graph_nav", {"size": 3})
    with pytest.raises(ValueError, match="adjacent"):
        GraphNavConfig(walls=((0, 0, 2, 0),))


def test_hex_positions_integrate_unit_moves_at_multiples_of_60_degrees():
    task, batch = sample(GraphNavConfig(width=5, height=4, n_steps=40, topology="hex"))
    actions = batch.inputs[:, 1::2] - task.config.n_symbols
    angle = actions.double() * math.pi / 3
    step = torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    pos = batch.latents["pos_xy"][:, 0::2].double()
    integrated = pos[:, :1] + torch.cumsum(step, 1)
    torch.testing.assert_close(integrated[:, :-1], pos[:, 1:], atol=1e-5, rtol=0)
    # neighbours are exactly the nodes at distance 1, in the direction of the action
    xy = task.graph.node_xy.tolist()
    for a in range(task.graph.n_nodes):
        expect = {b for b in range(task.graph.n_nodes) if abs(math.dist(xy[a], xy[b]) - 1) < 1e-6}
        assert set(task.graph.next_node[a].tolist()) - {-1} == expect
    assert task.d_vocab_in == task.config.n_symbols + 6
    assert build_task("graph_nav_hex").config.topology == "hex"


@pytest.mark.parametrize("topology", ["square", "hex"])
def test_two_rooms_are_joined_only_by_the_door(topology):
    config = GraphNavConfig(
        width=6, height=5, n_steps=200, topology=topology, layout="two_rooms", door_row=1
    )
    task, batch = sample(config, batch=64)
    x, row = batch.latents["pos_xy"][:, 0::2, 0], batch.latents["node"][:, 0::2] // 6
    barrier = 6 // 2 - 0.25
    side = x > barrier
    crossed = side[:, 1:] != side[:, :-1]
    assert crossed.any()
    touches_door = (row[:, 1:] == 1) | (row[:, :-1] == 1)
    assert touches_door[crossed].all()
    # both rooms are connected inside: every node is reachable from node 0
    reach, frontier = {0}, [0]
    while frontier:
        for nxt in task.graph.next_node[frontier.pop()].tolist():
            if nxt >= 0 and nxt not in reach:
                reach.add(nxt)
                frontier.append(nxt)
    assert len(reach) == task.graph.n_nodes


def test_frac_visited_and_accuracy_by_fraction_visited():
    task, batch = sample(batch=8)
    nodes = batch.latents["node"][:, 0::2]
    for b in range(8):
        for t in range(nodes.shape[1]):
            expect = len(set(nodes[b, : t + 1].tolist())) / task.graph.n_nodes
            assert batch.latents["frac_visited"][b, 2 * t].item() == pytest.approx(expect)
    correct = (torch.rand(nodes.shape, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    curve = move_curves(correct, batch.latents)["zero_shot_accuracy_by_frac_visited"]
    frac = batch.latents["frac_visited"][:, 1::2]
    zs = batch.latents["zero_shot"][:, 1::2]
    n = len(curve.x)
    for i in range(n):
        lo, hi = i / n, (i + 1) / n
        m = zs & (frac >= lo) & ((frac < hi) if i < n - 1 else (frac <= hi))
        assert curve.counts[i] == m.sum() and curve.sums[i] == correct[m].sum()
    # the curves pool every zero-shot move once, with the metrics' totals
    logits = torch.randn(*batch.inputs.shape, task.d_vocab_out)
    metrics, curves = task.metrics(logits, batch), task.curves(logits, batch)
    by_frac = curves["zero_shot_accuracy_by_frac_visited"]
    assert by_frac.counts.sum() == metrics["zero_shot_accuracy"][1]
    assert by_frac.sums.sum() == metrics["zero_shot_accuracy"][0]
    assert curves["all_accuracy_by_frac_visited"].counts.sum() == metrics["accuracy"][1]
    by_loop = curves["zero_shot_accuracy_by_loop_length"]
    assert by_loop.counts.sum() == metrics["zero_shot_accuracy"][1]


def test_loop_length_counts_moves_since_the_last_visit():
    task, batch = sample(batch=6)
    nodes = batch.latents["node"][:, 0::2]
    loop = batch.latents["loop_length"][:, 1::2]
    for b in range(6):
        walk = nodes[b].tolist()
        for t in range(len(walk) - 1):
            earlier = [i for i in range(t + 1) if walk[i] == walk[t + 1]]
            assert loop[b, t].item() == (t + 1 - earlier[-1] if earlier else -1)
    assert (loop[batch.latents["zero_shot"][:, 1::2]] >= 2).all()  # a loop needs 2+ moves


def test_memory_agents_bracket_link_inference():
    task, batch = sample(batch=32)
    chance = 1 / task.config.n_symbols
    node = memory_agent_accuracy(batch, task.config.n_symbols, "node")
    edge = memory_agent_accuracy(batch, task.config.n_symbols, "edge")
    zero_shot = batch.latents["zero_shot"][:, 1::2]
    assert (node[zero_shot] == 1).all() and (edge[zero_shot] == chance).all()
    assert (edge <= node).all()
    # the edge agent knows exactly the repeated directed transitions (brute force)
    nodes, actions = batch.latents["node"][:, 1::2], batch.inputs[:, 1::2]
    for b in range(4):
        pairs = list(zip(nodes[b].tolist(), actions[b].tolist(), strict=True))
        expect = [1.0 if pairs[t] in pairs[:t] else chance for t in range(len(pairs))]
        assert edge[b].tolist() == pytest.approx(expect)
    with pytest.raises(ValueError, match="valid: 'node', 'edge'"):
        memory_agent_accuracy(batch, 8, "path")


def test_walls_from_json_lists_and_bad_topology():
    config = GraphNavConfig(walls=[[0, 0, 1, 0]])  # as a JSON round trip gives them
    assert config.walls == ((0, 0, 1, 0),)
    with pytest.raises(ValueError, match="unknown topology 'tri'"):
        GraphNavConfig(topology="tri")
    with pytest.raises(ValueError, match="adjacent"):
        GraphNavConfig(topology="hex", walls=((0, 0, 0, 2),))


@pytest.mark.parametrize("cls", [SquareGrid, HexGrid])
def test_walk_is_uniform_over_open_actions_and_follows_the_graph(cls):
    graph = cls(3, 3, allow_stay=True)
    nodes, actions = graph.walk(4000, 8, torch.Generator().manual_seed(0))
    assert torch.equal(graph.next_node[nodes[:, :-1], actions], nodes[:, 1:])
    for node in range(graph.n_nodes):
        here = nodes[:, :-1] == node
        freq = torch.bincount(actions[here], minlength=graph.n_actions) / here.sum()
        open_ = graph.next_node[node] >= 0
        assert (freq[~open_] == 0).all()
        torch.testing.assert_close(
            freq[open_], torch.full_like(freq[open_], 1 / open_.sum()), atol=0.05, rtol=0
        )
