"""Every task: interface contract, determinism, and latents recomputed independently."""

import itertools
import math

import numpy as np
import pytest
import torch

from tasks import IGNORE_INDEX, TASKS, build_task
from tasks.alternation import AlternationConfig, AlternationTask
from tasks.copying import CopyingConfig, CopyingTask
from tasks.group_word import GroupWordConfig, GroupWordTask
from tasks.interval_timing import IntervalTimingConfig, IntervalTimingTask
from tasks.linear_track import LinearTrackConfig, LinearTrackTask
from tasks.mess3 import Mess3Config, Mess3Task
from tasks.path_integration import PathIntegrationConfig, PathIntegrationTask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_interface_and_determinism(name):
    task = build_task(name)
    assert task.name == name
    a, b, c = (task.sample(6, gen(s)) for s in (1, 1, 2))
    B, P = a.inputs.shape[:2]
    assert B == 6 and P <= task.seq_len
    if task.d_vocab_in is None:
        assert a.inputs.dtype.is_floating_point and a.inputs.shape[2] == task.d_input
    else:
        assert a.inputs.dtype == torch.long and a.inputs.ndim == 2
        assert 0 <= a.inputs.min() and a.inputs.max() < task.d_vocab_in
    if not a.targets.dtype.is_floating_point:
        scored = a.targets[a.targets != IGNORE_INDEX]
        assert scored.numel() > 0 and 0 <= scored.min() and scored.max() < task.d_vocab_out
    for key, value in a.latents.items():
        assert value.shape[:2] == (B, P), key
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert all(torch.equal(a.latents[k], b.latents[k]) for k in a.latents)
    assert not (torch.equal(a.inputs, c.inputs) and torch.equal(a.targets, c.targets))
    logits = torch.randn(B, P, task.d_vocab_out, requires_grad=True)
    loss = task.loss(logits, a)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.grad is not None
    for key, (total, count) in task.metrics(logits.detach(), a).items():
        assert isinstance(count, int) and math.isfinite(total), key


# --- linear track ---------------------------------------------------------------------------


@pytest.mark.parametrize("circular", [False, True])
def test_linear_track_positions_integrate_the_actions(circular):
    config = LinearTrackConfig(n_positions=6, n_steps=80, circular=circular)
    task = LinearTrackTask(config)
    batch = task.sample(32, gen())
    moves = torch.tensor([1, -1, 0])[batch.inputs[:, 1::2] - config.n_symbols]
    pos = batch.latents["pos"][:, 0::2]
    integrated = pos[:, :1] + torch.cumsum(moves, 1)
    if circular:
        integrated = integrated % 6
    assert torch.equal(integrated[:, :-1], pos[:, 1:])
    assert pos.min() >= 0 and pos.max() < 6
    # directed: most moves go along the heading; the heading flips only at the ends
    heading = batch.latents["direction"][:, 0::2]
    along = (moves == heading).float().mean().item()
    assert along == pytest.approx(0.8, abs=0.05)
    flips = heading[:, 1:] != heading[:, :-1]
    if circular:
        assert not flips.any()
    else:
        assert ((pos[:, 1:][flips] == 0) | (pos[:, 1:][flips] == 5)).all() and flips.any()
    assert torch.equal(batch.latents["pos_xy"][..., 0], batch.latents["pos"].float())


def test_linear_track_bidirectional_control_and_observation_only_layout():
    config = LinearTrackConfig(n_steps=200, p_forward=0.45, p_backward=0.45, show_actions=False)
    task = LinearTrackTask(config)
    batch = task.sample(32, gen())
    assert task.seq_len == 200 and batch.inputs.shape == (32, 200)
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    pos = batch.latents["pos"]
    steps = pos[:, 1:] - pos[:, :-1]
    assert steps.abs().max() <= 1
    # unbiased: as many steps east as west (within noise)
    assert abs((steps == 1).float().mean() - (steps == -1).float().mean()) < 0.03


# --- alternation maze -----------------------------------------------------------------------


def test_alternation_route_and_next_turn_recomputed_from_the_path():
    H = 4
    task = AlternationTask(AlternationConfig(stem_length=H, n_steps=60, p_repeat=0.3))
    batch = task.sample(16, gen())
    nodes = torch.cat([batch.inputs, batch.targets[:, -1:]], 1)
    col, row = nodes % 3, nodes // 3
    assert torch.equal(batch.latents["pos_xy"], torch.stack([col, row], -1)[:, :-1].float())
    n_checked = [0, 0]
    for b in range(16):
        c, r = col[b].tolist(), row[b].tolist()
        for t in range(len(c) - 1):  # every move is to an adjacent maze node, or a stay
            assert abs(c[t + 1] - c[t]) + abs(r[t + 1] - r[t]) <= 1
        arms = [(t, 0 if c[t] == 0 else 1) for t in range(len(c)) if c[t] != 1]
        for t in range(len(c) - 1):
            past = [arm for s, arm in arms if s <= t]
            if c[t] != 1 or past:  # retrospective: the current / last arm visited
                expect = (0 if c[t] == 0 else 1) if c[t] != 1 else past[-1]
                assert batch.latents["route"][b, t] == expect
                n_checked[0] += 1
            # prospective: the arm of the next entry onto an arm (from the choice point);
            # from an arm, the agent must first return to the stem: the next lap's arm
            ahead = [arm for s, arm in arms if s > t and c[s - 1] == 1]
            if ahead:
                assert batch.latents["next_turn"][b, t] == ahead[0]
                n_checked[1] += 1
    assert min(n_checked) > 100


def test_alternation_alternates_without_repeats():
    batch = AlternationTask(AlternationConfig(n_steps=120)).sample(8, gen())
    route, seg = batch.latents["route"], batch.latents["segment"]
    for b in range(8):
        entered = [
            route[b, t].item() for t in range(1, 120) if seg[b, t] > 0 and seg[b, t - 1] == 0
        ]
        assert len(entered) >= 3
        assert all(x != y for x, y in itertools.pairwise(entered))
    # on the stem, with strict alternation, the next turn is the other arm
    stem = seg == 0
    assert (batch.latents["next_turn"][stem] == 1 - route[stem]).all()


# --- path integration -----------------------------------------------------------------------


@pytest.mark.parametrize("velocity_input", ["cartesian", "polar"])
def test_path_integration_positions_integrate_the_velocity(velocity_input):
    config = PathIntegrationConfig(n_steps=100, velocity_input=velocity_input, init_input="xy")
    task = PathIntegrationTask(config)
    batch = task.sample(64, gen())
    x = batch.inputs.double()
    if velocity_input == "cartesian":
        vel = x[..., :2]
        init = x[:, 0, 2:4]
    else:
        vel = x[..., :1] * x[..., 1:3]
        init = x[:, 0, 3:5]
    assert (x[:, 1:, -2:] == 0).all()  # the start is told at step 0 only
    pos = init[:, None] + config.dt * torch.cumsum(vel, 1)
    true = batch.latents["pos_xy"].double()
    torch.testing.assert_close(pos[:, :-1], true[:, 1:], atol=1e-4, rtol=0)
    torch.testing.assert_close(init, true[:, 0], atol=1e-6, rtol=0)
    assert true.abs().max() <= config.box_size / 2 + 1e-6
    # the agent seldom runs into a wall
    assert (true.abs() >= config.box_size / 2 - 1e-6).float().mean() < 0.02
    speed = batch.latents["speed"]
    assert 0.3 < speed.mean() < 1.5


def test_place_cell_targets_recomputed_in_numpy():
    for readout in ("dos", "gaussian"):
        config = PathIntegrationConfig(n_steps=10, readout=readout, n_place_cells=32)
        task = PathIntegrationTask(config)
        batch = task.sample(4, gen())
        lat = batch.latents
        nxt = lat["pos_xy"] + config.dt * lat["speed"][..., None] * torch.stack(
            [torch.cos(lat["heading"]), torch.sin(lat["heading"])], -1
        )
        p = nxt.double().numpy()[..., None, :]
        d2 = ((p - task.centres.double().numpy()) ** 2).sum(-1)

        def softmax(z):
            e = np.exp(z - z.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)

        sigma = config.place_cell_width
        y = softmax(-d2 / (2 * sigma**2))
        if readout == "dos":
            y = y - softmax(-d2 / (2 * (config.surround_scale * sigma) ** 2))
            y = y - y.min(-1, keepdims=True)
        y = y / y.sum(-1, keepdims=True)
        np.testing.assert_allclose(batch.targets.numpy(), y, atol=1e-4)
        # decoding the target population (top-1) finds the nearest place-cell centre
        task.config.decode_top_k = 1
        total, count = task.metrics(batch.targets, batch)["pos_error"]
        nearest = np.sqrt(d2.min(-1))
        assert total / count == pytest.approx(nearest.mean(), abs=1e-4)
    cartesian = PathIntegrationTask(PathIntegrationConfig(n_steps=10, readout="cartesian"))
    batch = cartesian.sample(4, gen())
    assert cartesian.d_vocab_out == 2
    assert cartesian.loss(batch.targets, batch) == 0
    total, count = cartesian.metrics(batch.targets, batch)["pos_error"]
    assert total / count < 1e-5


# --- interval timing ------------------------------------------------------------------------


@pytest.mark.parametrize("cue_signals_delay", [True, False])
def test_interval_timing_latents_recomputed_from_the_sequence(cue_signals_delay):
    config = IntervalTimingConfig(n_steps=80, cue_signals_delay=cue_signals_delay)
    task = IntervalTimingTask(config)
    batch = task.sample(16, gen())
    lat = batch.latents
    for b in range(16):
        tokens, targets = batch.inputs[b].tolist(), batch.targets[b].tolist()
        cues = [t for t, x in enumerate(tokens) if x > 0]
        responses = [t for t, y in enumerate(targets) if y == 1]
        assert len(cues) >= 3
        last, delay, trial, pending = -1, -1, -1, False
        for t in range(len(tokens)):
            if tokens[t] > 0:
                last, trial, pending = t, trial + 1, True
                later = [r for r in responses if r > t]
                nxt_cue = [c for c in cues if c > t]
                if later and (not nxt_cue or later[0] < nxt_cue[0]):
                    delay = later[0] - t
                    if cue_signals_delay:
                        assert tokens[t] == 1 + delay - config.delay_min
                else:  # the response falls after the end: only the latent knows it
                    delay = lat["delay_length"][b, t].item()
                assert config.delay_min <= delay <= config.delay_max
            since = t - last if last >= 0 else -1
            phase = 0
            if pending and since == delay:
                phase, pending = 2, False
            elif pending:
                phase = 1
            assert lat["t_since_cue"][b, t] == since
            assert lat["delay_length"][b, t] == (delay if last >= 0 else -1)
            assert lat["phase"][b, t] == phase
            assert lat["trial"][b, t] == trial
        # ITIs between a response and the next cue are within range
        for r in responses:
            nxt = [c for c in cues if c > r]
            if nxt:
                assert config.iti_min <= nxt[0] - r - 1 <= config.iti_max
    perfect = task.metrics(torch.nn.functional.one_hot(batch.targets, 2).float(), batch)
    assert all(perfect[k][0] == perfect[k][1] for k in ("accuracy", "hit_rate", "trial_accuracy"))


# --- copying --------------------------------------------------------------------------------


def test_copying_layout_targets_and_length_evaluation():
    task = CopyingTask(CopyingConfig(max_train_len=5))
    assert task.seq_len == 2 * 20 + 2
    batch = task.sample(32, gen())
    assert batch.inputs.shape[1] == 12
    for b in range(32):
        row, n = batch.inputs[b].tolist(), batch.latents["length"][b, 0].item()
        assert 1 <= n <= 5
        letters = row[1 : n + 1]
        assert row[0] == task.bos and row[n + 1] == task.sep
        assert row[n + 2 : 2 * n + 2] == letters
        assert all(x == task.pad for x in row[2 * n + 2 :])
        scored = [(t, y) for t, y in enumerate(batch.targets[b].tolist()) if y != IGNORE_INDEX]
        assert [t for t, _ in scored] == list(range(n + 1, 2 * n + 1))
        assert [y for _, y in scored] == letters
        assert [batch.latents["copy_pos"][b, t].item() for t, _ in scored] == list(range(1, n + 1))
    long = task.length_eval_task()
    assert long.seq_len == task.seq_len and long.d_vocab_in == task.d_vocab_in
    lb = long.sample(8, gen())
    assert lb.inputs.shape[1] <= task.seq_len
    assert (lb.latents["length"][:, 0] > 5).all() and (lb.latents["length"][:, 0] <= 20).all()
    logits = torch.nn.functional.one_hot(lb.targets.clamp(min=0), task.d_vocab_out).float()
    m = long.metrics(logits, lb)
    assert m["string_accuracy"] == (8, 8) and m["string_accuracy_longer"] == (8, 8)
    assert m["accuracy_in_dist"] == (0, 0)
    logits[0, lb.latents["length"][0, 0] + 1] = -logits[0, lb.latents["length"][0, 0] + 1]
    assert long.metrics(logits, lb)["string_accuracy"] == (7, 8)


# --- group word problems --------------------------------------------------------------------


def compose(p, q):
    """p * q: apply q, then p."""
    return tuple(p[q[i]] for i in range(len(q)))


def test_group_word_states_are_products_of_permutations():
    perms = list(itertools.permutations(range(5)))
    even = [
        p for p in perms if sum(p[i] > p[j] for i in range(5) for j in range(i + 1, 5)) % 2 == 0
    ]
    assert len(even) == 60
    task = GroupWordTask(GroupWordConfig(group="A5", n_steps=20))
    batch = task.sample(16, gen())
    for b in range(16):
        state = tuple(range(5))
        for t in range(20):
            state = compose(state, even[batch.inputs[b, t]])
            assert even[batch.latents["state"][b, t]] == state
            assert batch.targets[b, t] == batch.latents["state"][b, t]
    # A5 is closed and non-abelian; S5 has 120 elements
    table = task.table
    assert table.shape == (60, 60) and not torch.equal(table, table.T)
    assert GroupWordTask(GroupWordConfig(group="S5")).d_vocab_out == 120


def test_group_word_z60_is_addition_mod_60():
    task = GroupWordTask(GroupWordConfig(group="Z60", n_steps=30))
    batch = task.sample(8, gen())
    expect = torch.cumsum(batch.inputs, 1) % 60
    assert torch.equal(batch.latents["state"], expect)
    with pytest.raises(ValueError, match="unknown group 'A6'"):
        build_task("group_word", {"group": "A6"})


# --- Mess3 ----------------------------------------------------------------------------------


def numpy_mess3(x, a):
    b, y = (1 - a) / 2, 1 - 2 * x
    return np.array(
        [
            [[a * y, b * x, b * x], [a * x, b * y, b * x], [a * x, b * x, b * y]],
            [[b * y, a * x, b * x], [b * x, a * y, b * x], [b * x, a * x, b * y]],
            [[b * y, b * x, a * x], [b * x, b * y, a * x], [b * x, b * x, a * y]],
        ]
    )


def test_mess3_beliefs_match_a_numpy_forward_filter():
    task = Mess3Task(Mess3Config(n_steps=24))
    T = numpy_mess3(0.15, 0.6)
    np.testing.assert_allclose(task.T.numpy(), T)
    np.testing.assert_allclose(T.sum(0).sum(1), 1)
    np.testing.assert_allclose(task.pi.numpy(), np.ones(3) / 3, atol=1e-9)
    batch = task.sample(32, gen())
    for b in range(32):
        eta = np.ones(3) / 3
        for t, token in enumerate(batch.inputs[b].tolist()):
            eta = eta @ T[token]
            eta = eta / eta.sum()
            np.testing.assert_allclose(batch.latents["belief"][b, t].numpy(), eta, atol=1e-5)
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    # a token names the state the chain moves into with probability alpha
    own = (batch.inputs == batch.latents["hidden_state"]).float().mean().item()
    assert own == pytest.approx(0.6, abs=0.05)
    # the Bayes-optimal predictor has zero KL to itself and its CE is below log(3)
    p = task.predictive(batch.latents["belief"])
    m = task.metrics(torch.log(p).float(), batch)
    assert m["kl_to_bayes"][0] / m["kl_to_bayes"][1] < 1e-5
    assert m["bayes_ce"][0] / m["bayes_ce"][1] < math.log(3)
