"""Constructed networks: each construct's units are exactly functions of what it claims
(the current input, running sums of the inputs, the step index), read through the lab's
own activation cache like any trained network."""

import dataclasses

import pytest
import torch

from models.constructed import CONSTRUCTS, build_construct
from probes.cache import cache_activations, layer_hooks
from tasks import TASKS, build_task

HOOKS = ["hook_embed", *layer_hooks(1)]
UNITS = "blocks.0.hook_resid_post"


def small(name):
    fields = {f.name for f in dataclasses.fields(TASKS[name][0])}
    return build_task(name, {"n_steps": 24} if "n_steps" in fields else {})


def run(model, inputs, hooks=HOOKS):
    _, cache = model.run_with_cache(inputs, names_filter=lambda name: name in hooks)
    return {h: cache[h] for h in hooks}


@pytest.mark.parametrize("task_name", sorted(TASKS))
@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_every_construct_runs_on_every_task_through_the_activation_cache(
    tmp_path, task_name, construct
):
    task = small(task_name)
    model = build_construct(construct, task, n_units=12, seed=0)
    g = torch.Generator().manual_seed(1)
    batches = [task.sample(3, g), task.sample(2, g)]
    hooks = layer_hooks(1)  # what the probe stage caches
    store = cache_activations(model, iter(batches), hooks, tmp_path / "store", "cpu", False)
    for hook in hooks:
        acts, _ = store.load(hook, [])
        assert acts.shape == (5, batches[0].seq_len, 12), hook
        assert torch.isfinite(acts).all()
    units = store.load(UNITS, [])[0]
    assert torch.equal(units[:3], model(batches[0].inputs))
    # units are neither saturated nor a constant
    assert (units.abs() > 0.99).float().mean() < 0.3
    assert (units.flatten(0, 1).std(0) > 1e-3).float().mean() > 0.9


def permuted_history(inputs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The same tokens (or input vectors) in a random order along pos, per sequence."""
    order = torch.rand(inputs.shape[:2], generator=g).argsort(1)
    index = order if inputs.ndim == 2 else order[..., None].expand_as(inputs)
    return inputs.gather(1, index), order


@pytest.mark.parametrize("task_name", ["graph_nav", "interval_timing", "path_integration"])
def test_sensory_units_depend_on_the_current_input_only(task_name):
    task = small(task_name)
    model = build_construct("sensory", task, n_units=16, seed=3)
    g = torch.Generator().manual_seed(0)
    inputs = task.sample(4, g).inputs
    shuffled, order = permuted_history(inputs, g)
    for hook in HOOKS:
        plain, moved = run(model, inputs)[hook], run(model, shuffled)[hook]
        index = order[..., None].expand_as(plain)
        # every token keeps its units wherever its history puts it
        torch.testing.assert_close(moved, plain.gather(1, index), rtol=0, atol=1e-6)
    if task.d_vocab_in is not None:  # equal tokens, equal units, in any sequence
        units = run(model, inputs)[UNITS].flatten(0, 1)
        tokens = inputs.flatten()
        for token in tokens.unique():
            same = units[tokens == token]
            assert torch.equal(same, same[:1].expand_as(same))


@pytest.mark.parametrize("task_name", ["graph_nav", "interval_timing", "path_integration"])
def test_clock_units_are_the_same_for_any_inputs(task_name):
    task = small(task_name)
    model = build_construct("clock", task, n_units=16, seed=3)
    g = torch.Generator().manual_seed(0)
    a, b = task.sample(3, g).inputs, task.sample(3, g).inputs
    for hook in HOOKS:
        first, second = run(model, a)[hook], run(model, b)[hook]
        assert torch.equal(first, second)
        assert torch.equal(first, first[:1].expand_as(first))  # one function of t
        assert (first.std(1) > 1e-3).any()  # and it does change with t
    units = run(model, a)[UNITS][0]  # [pos, units]
    bumps = units[:, :8]
    t = torch.arange(task.seq_len, dtype=torch.float32)[:, None]
    expected = torch.exp(-((t - model.centre) ** 2) / (2 * model.width**2))
    torch.testing.assert_close(bumps, expected)
    assert torch.equal(model.width, 1 + 0.25 * model.centre)  # wider later


def leaky_sums_loop(drive: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
    """s_t = sum over k <= t of leak^(t - k) drive_k, term by term. drive [batch, pos, n]."""
    batch, pos, n = drive.shape
    out = torch.zeros(batch, pos, n, dtype=torch.float64)
    for t in range(pos):
        for k in range(t + 1):
            out[:, t] += leak.double() ** (t - k) * drive[:, k].double()
    return out


@pytest.mark.parametrize("task_name", ["graph_nav", "interval_timing", "path_integration"])
def test_the_integrator_state_is_the_leaky_running_sum_of_its_input_drive(task_name):
    task = small(task_name)
    model = build_construct("integrator", task, n_units=16, seed=2)
    inputs = task.sample(3, torch.Generator().manual_seed(0)).inputs
    acts = run(model, inputs, [*HOOKS, "blocks.0.hook_state"])
    drive, state = acts["hook_embed"], acts["blocks.0.hook_state"]
    perfect = model.leak == 1
    assert perfect.sum() == 4 and (model.leak[~perfect] < 1).all()
    # a = 1: the plain cumulative sum of the drive
    torch.testing.assert_close(state[..., perfect], drive[..., perfect].cumsum(1))
    torch.testing.assert_close(
        state.double(), leaky_sums_loop(drive, model.leak), atol=1e-4, rtol=0
    )
    # the drive is the centred input, projected
    encoded = model.encode(inputs)
    torch.testing.assert_close(drive, (encoded - model.input_mean) @ model.U)
    # and the units read the sums, so the history matters (unlike a sensory unit)
    shuffled, order = permuted_history(inputs, torch.Generator().manual_seed(1))
    moved = run(model, shuffled)[UNITS]
    plain = run(model, inputs)[UNITS].gather(1, order[..., None].expand(-1, -1, 16))
    assert (moved - plain).abs().max() > 0.1


def test_the_integrator_on_token_inputs_integrates_the_counts_of_each_token():
    """Perfect sums are the running counts of every token minus t times its mean rate,
    projected by U: here checked against counts made by hand."""
    task = small("graph_nav")
    model = build_construct("integrator", task, n_units=8, seed=0)
    inputs = task.sample(2, torch.Generator().manual_seed(4)).inputs
    state = run(model, inputs, ["blocks.0.hook_state"])["blocks.0.hook_state"]
    counts = torch.zeros(2, task.seq_len, task.d_vocab_in)
    for b in range(2):
        for t in range(task.seq_len):
            counts[b, t:, inputs[b, t]] += 1
    steps = torch.arange(1, task.seq_len + 1, dtype=torch.float32)[None, :, None]
    expected = (counts - steps * model.input_mean) @ model.U
    perfect = model.leak == 1
    torch.testing.assert_close(state[..., perfect], expected[..., perfect], atol=1e-4, rtol=0)


@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_a_seed_is_one_draw_of_the_mechanism(construct):
    task = small("graph_nav")
    inputs = task.sample(2, torch.Generator().manual_seed(0)).inputs
    first = build_construct(construct, task, n_units=10, seed=0)(inputs)
    again = build_construct(construct, task, n_units=10, seed=0)(inputs)
    other = build_construct(construct, task, n_units=10, seed=1)(inputs)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.1


def test_bad_construct_requests_are_refused_with_what_is_valid():
    task = small("graph_nav")
    with pytest.raises(ValueError, match=r"unknown construct 'rnn'; valid constructs: \['clock'"):
        build_construct("rnn", task)
    with pytest.raises(ValueError, match="n_units >= 2"):
        build_construct("sensory", task, n_units=1)
    model = build_construct("sensory", task, n_units=4)
    with pytest.raises(ValueError, match=r"token ids of shape \[batch, pos\]"):
        model(torch.zeros(2, 3, 5))
    continuous = build_construct("integrator", small("path_integration"), n_units=4)
    with pytest.raises(ValueError, match=r"features of shape \[batch, pos, "):
        continuous(torch.zeros(2, 3, 1))


def test_constructs_are_not_trainable_and_move_with_the_module():
    model = build_construct("integrator", small("graph_nav"), n_units=4)
    params = list(model.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert model.to(torch.float64).U.dtype == torch.float64
