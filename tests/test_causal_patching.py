import pytest
import torch
import torch.nn.functional as F

from models import MODELS, build_model
from models.attention import POSITIONAL
from models.stepping import RecurrentStepper, stepper_for
from probes.causal.patching import greedy_tokens, read_states, rollout

VOCAB = 7
ARCHS = sorted(MODELS)  # every registered model has a stepper (models.registry.STEPPERS)


def tiny(name: str, n_layers: int = 2, d_input: int | None = None, **extra):
    fields = {"d_vocab_out": VOCAB, "d_model": 16, "n_layers": n_layers, "seed": 0, **extra}
    fields.update({"d_input": d_input} if d_input else {"d_vocab": VOCAB})
    return build_model(name, fields).eval()


def sequences(batch: int, length: int, d_input: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if d_input:
        return torch.randn(batch, length, d_input, generator=g)
    return torch.randint(VOCAB, (batch, length), generator=g)


def state_names(model) -> list[str]:
    return list(stepper_for(model).state_shapes)


def window_from_hook_x(cache, name: str, model) -> torch.Tensor:
    """Mamba's conv window after each step [batch, pos, E, d_conv], from hook_x."""
    hook_x = cache[name.replace("conv_state", "hook_x")]  # [batch, pos, E]
    k = model.cfg.d_conv
    return F.pad(hook_x, (0, 0, k - 1, 0)).unfold(1, k, 1)


DERIVED_STATES = {"conv_state": window_from_hook_x}
"""States that are not hooks, by the end of their name: how to read them from one forward
pass (the ground truth of the step-by-step states)."""


def cached_states(model, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The states of every step from one full forward pass (run_with_cache): a hook's
    value, or a derived state rebuilt from hooks."""
    _, cache = model.run_with_cache(inputs)
    states = {}
    for state in state_names(model):
        if state in model.hook_dict:
            states[state] = cache[state]
            continue
        derived = DERIVED_STATES.get(state.rsplit(".", 1)[-1])
        assert derived, f"state {state!r} is neither a hook nor in DERIVED_STATES"
        states[state] = derived(cache, state, model)
    return states


@pytest.mark.parametrize("d_input", [None, 3])
@pytest.mark.parametrize("name", ARCHS)
def test_step_by_step_rollout_equals_the_full_forward_pass(name, d_input):
    model = tiny(name, d_input=d_input)
    x = sequences(3, 12, d_input)
    out = rollout(model, x, record=state_names(model))
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x), atol=2e-5, rtol=1e-4)
        expected = cached_states(model, x)
    for state, value in out.states.items():
        torch.testing.assert_close(value, expected[state], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.inputs, x)


def test_signed_mamba_rollout_equals_the_full_forward_pass():
    """The stepper follows the signed transition a = 2 exp(dt A) - 1 (its self-check would
    refuse a model option it does not know)."""
    model = tiny("mamba", eigenvalues="signed")
    x = sequences(3, 12)
    out = rollout(model, x, record=state_names(model))
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x), atol=2e-5, rtol=1e-4)
        expected = cached_states(model, x)
    for state, value in out.states.items():
        torch.testing.assert_close(value, expected[state], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_patched_state_continues_exactly_as_the_run_it_came_from(name):
    """Run B differs from run A before step t and agrees from t on. Writing B's state into
    A at step t (the transformer's state is its whole prefix: every position <= t) must give
    B's predictions from step t on, teacher forced and free running. A recurrent state is
    patched at step t alone."""
    model, t = tiny(name), 5
    a = sequences(4, 12, seed=1)
    b = a.clone()
    b[:, :t] = sequences(4, t, seed=2)
    names = state_names(model)
    b_states = read_states(model, b, names)
    steps = [t] if isinstance(stepper_for(model), RecurrentStepper) else range(t + 1)
    patches = {s: {n: b_states[n][:, s] for n in names} for s in steps}

    with torch.no_grad():
        b_logits = model(b)
    patched = rollout(model, a, patches=patches)
    torch.testing.assert_close(patched.logits[:, t:], b_logits[:, t:], atol=2e-5, rtol=1e-4)
    unpatched = rollout(model, a)
    assert (unpatched.logits[:, t:] - b_logits[:, t:]).abs().max() > 1e-3  # the test can fail

    free_a = rollout(model, a[:, : t + 1], 6, greedy_tokens, patches=patches)
    free_b = rollout(model, b[:, : t + 1], 6, greedy_tokens)
    torch.testing.assert_close(free_a.logits[:, t:], free_b.logits[:, t:], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(free_a.inputs[:, t + 1 :], free_b.inputs[:, t + 1 :])
    torch.testing.assert_close(free_a.inputs[:, t + 1 :], free_a.logits[:, t:-1].argmax(-1))


def test_lstm_patch_equals_torch_lstm_started_from_the_patched_state():
    """Independent reference: nn.LSTM run from an initial (h, c) = (patched h_t, c_t)."""
    model, t = tiny("lstm", n_layers=1), 4
    x = sequences(3, 10)
    h_new = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    c_t = read_states(model, x, ["blocks.0.hook_cell"])["blocks.0.hook_cell"][:, t]
    out = rollout(model, x, patches={t: {"blocks.0.hook_resid_post": h_new}})
    with torch.no_grad():
        emb = model.embed(x[:, t + 1 :])
        h_rest, _ = model.blocks[0].lstm(emb, (h_new[None], c_t[None]))
        expected = model.unembed(torch.cat([h_new[:, None], h_rest], 1))
    torch.testing.assert_close(out.logits[:, t:], expected, atol=2e-5, rtol=1e-4)


def test_mamba_patch_equals_the_recurrence_written_out_from_cached_hooks():
    """Independent reference for a one-layer Mamba: the patch does not change the mixer's
    inputs, so the patched state trajectory follows h_s = exp(dt_s A) h_{s-1} + dt_s B_s x_s
    from the cached dt, B and conv output; the full forward pass with that whole
    trajectory hooked in gives the logits."""
    model, t = tiny("mamba", n_layers=1), 4
    x = sequences(2, 10)
    name = "blocks.0.mixer.hook_ssm_state"
    h_new = torch.randn(2, 32, 16, generator=torch.Generator().manual_seed(3))
    out = rollout(model, x, patches={t: {name: h_new}})

    mixer = model.blocks[0].mixer
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
        dt, B = cache["blocks.0.mixer.hook_ssm_dt"], cache["blocks.0.mixer.hook_ssm_B"]
        u = cache["blocks.0.mixer.hook_conv"]
        A = -torch.exp(mixer.A_log)
        trajectory = cache[name].clone()
        h = h_new
        trajectory[:, t] = h
        for s in range(t + 1, x.shape[1]):
            drive = (dt[:, s] * u[:, s])[..., None] * B[:, s, None]
            h = torch.exp(dt[:, s, :, None] * A) * h + drive
            trajectory[:, s] = h
        expected = model.run_with_hooks(x, fwd_hooks=[(name, lambda act, hook: trajectory)])
    torch.testing.assert_close(out.logits, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("positional", POSITIONAL)
def test_transformer_patch_equals_one_hooked_forward_pass(positional):
    """Independent reference: in one forward pass a hook edit at position t reaches later
    positions through attention, exactly what the stepper's replayed edit must do."""
    model, t = tiny("transformer", positional=positional, n_heads=2, n_ctx=32), 3
    x = sequences(2, 9)
    delta = torch.randn(16, generator=torch.Generator().manual_seed(4))
    name = "blocks.0.hook_resid_post"
    out = rollout(model, x, patches={t: {name: lambda h: h + delta}})

    def edit(act, hook):
        act[:, t] += delta
        return act

    with torch.no_grad():
        expected = model.run_with_hooks(x, fwd_hooks=[(name, edit)])
    torch.testing.assert_close(out.logits, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_callable_edit_equals_the_value_it_computes(name):
    model, t = tiny(name), 3
    x = sequences(2, 8)
    state = state_names(model)[-1]
    recorded = read_states(model, x, [state])[state][:, t]
    shift = torch.full_like(recorded, 0.5)
    by_value = rollout(model, x, patches={t: {state: recorded + shift}}, record=[state])
    by_function = rollout(model, x, patches={t: {state: lambda v: v + shift}}, record=[state])
    torch.testing.assert_close(by_value.logits, by_function.logits)
    torch.testing.assert_close(by_value.states[state][:, t], recorded + shift)


def test_clear_errors():
    model = tiny("lstm")
    x = sequences(2, 5)
    with pytest.raises(KeyError, match=r"no state 'blocks.9.hook_cell'; valid: \['blocks.0"):
        rollout(model, x, patches={1: {"blocks.9.hook_cell": torch.zeros(16)}})
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(2, 16\)"):
        rollout(model, x, patches={1: {"blocks.0.hook_cell": torch.zeros(3)}})
    with pytest.raises(ValueError, match="outside the rollout's steps 0..4"):
        rollout(model, x, patches={5: {"blocks.0.hook_cell": torch.zeros(16)}})
    with pytest.raises(ValueError, match="needs next_input"):
        rollout(model, x, n_steps=2)
    with pytest.raises(ValueError, match=r"next_input returned shape \(2, 7\)"):
        rollout(model, x, n_steps=2, next_input=lambda logits, step: logits)
    changed = tiny("mamba")
    forward = changed.forward
    changed.forward = lambda inputs: forward(inputs) * 1.01  # something the stepper can't know
    with pytest.raises(NotImplementedError, match="does not reproduce its forward pass"):
        rollout(changed, x)
    with pytest.raises(TypeError, match=r"no stepper for Linear; registered .*lstm \(HookedLSTM"):
        rollout(torch.nn.Linear(2, 2), x)
    transformer = tiny("transformer", n_ctx=32)
    with pytest.raises(ValueError, match="beyond the transformer's n_ctx=32"):
        rollout(transformer, sequences(1, 30), n_steps=5, next_input=greedy_tokens)
