import pytest
import torch

from tasks import IGNORE_INDEX, build_task
from tasks.graph_nav import ACTION_DXY, GraphNavConfig, GraphNavTask, link_inference_flags


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
