import pytest
import torch
import torch.nn.functional as F

from models import MODELS, build_model
from models.stepping import stepper_for
from probes.causal.ablation import (
    ablate,
    ablation_sweep,
    bootstrap_ci,
    matched_units,
    unit_statistics,
)
from probes.causal.edits import run_edited
from probes.causal.steering import steer
from probes.fit import fit_probe
from tasks import Batch
from tasks.targets import ProbeTarget
from tests.causal_models import PositionReader, TokenEcho


def cross_entropy(logits, batch):
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())


def test_steering_along_the_position_direction_moves_the_decoded_position_as_designed():
    model = PositionReader(n=16, d=256, gain=0.5)
    tokens = torch.randint(5, 11, (8, 6), generator=torch.Generator().manual_seed(0))
    alphas = torch.linspace(-4, 4, 9)  # |alpha * gain| <= 2 positions: inside the track
    curve = steer(model, tokens, "hook_resid", model.w, alphas, model.expected_position)
    along, random = curve.slopes()
    assert along == pytest.approx(0.5, rel=0.03)  # designed: s moves by gain per unit alpha
    assert (curve.along.diff() > 0).all()  # monotone dose-response
    assert curve.along[alphas == 0].abs().item() < 1e-6
    assert random.abs().max() < 0.1 * along  # random unit directions of the same norm: ~0
    assert curve.random.shape == (8, 9)


def test_steering_along_a_fitted_probe_moves_the_output_as_the_probe_predicts():
    """Fit a ridge probe for the position on the model's own activations, then steer along
    its direction: the decoded position must move by alpha * probe gain."""
    model = PositionReader(n=16, d=256, gain=0.5)
    g = torch.Generator().manual_seed(1)
    batches = []
    for i in range(6):
        tokens = torch.randint(16, (200,), generator=g)
        acts = model.E[tokens] + 0.05 * torch.randn(200, 256, generator=g)
        batches.append((acts, tokens.float(), i * 10 + torch.arange(200) // 20))
    probe = fit_probe("ridge", batches, ProbeTarget("position")).probe
    tokens = torch.randint(5, 11, (8, 6), generator=g)
    alphas = torch.linspace(-3, 3, 7) / probe.gain()  # moves of up to 3 decoded positions
    curve = steer(model, tokens, "hook_resid", probe.direction(), alphas, model.expected_position)
    along, random = curve.slopes()
    assert along == pytest.approx(probe.gain(), rel=0.05)
    assert random.abs().mean() < 0.1 * along


def test_steering_only_the_chosen_positions():
    model = PositionReader()
    tokens = torch.full((2, 5), 7)
    curve = steer(
        model,
        tokens,
        "hook_resid",
        model.w,
        [2.0],
        lambda lg: model.expected_position(lg),
        positions=[1, 3],
        n_random=0,
    )
    # two of five positions move by alpha * gain = 1 position each
    assert curve.along.item() == pytest.approx(2 / 5, rel=1e-3)


def naive_edited_logits(model, inputs, hook, scale, shift, mask):
    """One forward pass per condition with a plainly written hook (the reference)."""
    out = []
    for sc, sh in zip(scale, shift, strict=True):

        def edit(act, hook, sc=sc, sh=sh):
            flat = act.flatten(2).clone()
            flat[mask] = flat[mask] * sc + sh
            return flat.reshape(act.shape)

        with torch.no_grad():
            out.append(model.run_with_hooks(inputs, fwd_hooks=[(hook, edit)]))
    return torch.stack(out)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_conditions_equal_one_pass_per_condition(name):
    """Every registered model, at the first layer's output and at each of the last layer's
    states that is a hook (LSTM cell, Mamba's SSM state, the transformer's residual
    stream...)."""
    fields = {"d_vocab": 5, "d_vocab_out": 5, "d_model": 8, "n_layers": 2, "seed": 0}
    model = build_model(name, fields).eval()
    states = [s for s in stepper_for(model).state_shapes if s in model.hook_dict]
    hooks = ["blocks.0.hook_resid_post"] + [s for s in states if s.startswith("blocks.1.")]
    for hook in dict.fromkeys(hooks):
        g = torch.Generator().manual_seed(0)
        inputs = torch.randint(5, (3, 7), generator=g)
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs)
        units = cache[hook][0, 0].numel()
        scale = (torch.rand(5, units, generator=g) > 0.5).float()
        shift = torch.randn(5, units, generator=g)
        mask = torch.zeros(3, 7, dtype=torch.bool)
        mask[:, 2] = mask[1, 5] = True
        expected = naive_edited_logits(model, inputs, hook, scale, shift, mask)
        got = run_edited(model, inputs, hook, scale, shift, lambda lg: lg, mask, max_rows=6)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4, msg=hook)


def echo_batches(n_batches=12):
    g = torch.Generator().manual_seed(2)
    return [
        Batch(tokens, tokens)
        for tokens in (torch.randint(4, (16, 8), generator=g) for _ in range(n_batches))
    ]


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablating_the_units_that_carry_the_variable_hurts_more_than_random_or_matched(mode):
    model, batches = TokenEcho(), echo_batches()
    result = ablate(model, batches, "hook_resid", [0, 1, 2, 3], cross_entropy, mode, n_draws=10)
    summary = result.summary()
    assert summary["target"][1] > 0.5  # lower bound: the loss rises a lot
    assert summary["target - random"][1] > 0.5
    assert summary["target - matched"][1] > 0.5
    # the readout never looks at the other units: ablating them changes nothing at all
    assert result.random.abs().max() < 1e-6 and result.matched.abs().max() < 1e-6
    assert result.target.shape == result.clean_loss.shape == (12,)
    assert result.random.shape == result.matched.shape == (10, 12)


def test_mean_ablation_sets_units_to_their_mean_over_the_data():
    model, batches = TokenEcho(), echo_batches(3)
    mean, variance = unit_statistics(model, batches, "hook_resid")
    acts = torch.cat([model.E[b.inputs].flatten(0, 1) for b in batches])
    torch.testing.assert_close(mean, acts.mean(0))
    torch.testing.assert_close(variance, acts.var(0, unbiased=False), atol=1e-5, rtol=1e-5)
    # ablating every code unit to its mean: logits are the same for every token
    sweep = ablation_sweep(model, batches, "hook_resid", cross_entropy, mode="mean")
    assert sweep.shape == (32, 3)
    assert (sweep[:4] > 0).all() and sweep[4:].abs().max() < 1e-6


def test_ablation_sweep_equals_ablating_each_unit_by_hand():
    model = build_model("lstm", {"d_vocab": 5, "d_vocab_out": 5, "d_model": 6, "seed": 0}).eval()
    g = torch.Generator().manual_seed(0)
    batches = [Batch(x, x.roll(-1, 1)) for x in torch.randint(5, (2, 4, 9), generator=g)]
    sweep = ablation_sweep(model, batches, "blocks.0.hook_resid_post", cross_entropy, max_rows=8)
    for unit in range(6):

        def zero(act, hook, unit=unit):
            act[..., unit] = 0
            return act

        for b, batch in enumerate(batches):
            with torch.no_grad():
                clean = cross_entropy(model(batch.inputs), batch)
                ablated = cross_entropy(
                    model.run_with_hooks(
                        batch.inputs, fwd_hooks=[("blocks.0.hook_resid_post", zero)]
                    ),
                    batch,
                )
            assert sweep[unit, b].item() == pytest.approx((ablated - clean).item(), abs=1e-5)


def test_matched_units_have_the_closest_variances():
    variance = torch.arange(40).float()
    units = torch.tensor([10, 11, 30])
    others = torch.tensor([u for u in range(40) if u not in (10, 11, 30)])
    draws = matched_units(variance, units, others, 50, torch.Generator().manual_seed(0))
    assert draws.shape == (50, 3)
    assert all(len(set(d.tolist())) == 3 for d in draws)
    assert not set(draws.flatten().tolist()) & {10, 11, 30}
    assert ((variance[draws] - variance[units]).abs() <= 3).all()  # pool of the 4 nearest
    assert len(set(draws[:, 2].tolist())) == 4  # random within the pool: 28, 29, 31, 32


def test_bootstrap_interval_matches_the_normal_theory_interval():
    values = torch.randn(400, generator=torch.Generator().manual_seed(0)) + 3
    mean, lo, hi = bootstrap_ci(values, n_boot=4000)
    half = 1.96 * values.std().item() / 400**0.5
    assert mean == pytest.approx(values.mean().item())
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert lo < mean < hi
    assert bootstrap_ci(torch.full((5,), 2.0)) == (2.0, 2.0, 2.0)


def test_clear_errors():
    model, batches = TokenEcho(), echo_batches(2)
    with pytest.raises(KeyError, match=r"no hook 'hook_nope'; valid: \['hook_resid'\]"):
        ablate(model, batches, "hook_nope", [0], cross_entropy)
    with pytest.raises(ValueError, match="distinct indices in 0..31"):
        ablate(model, batches, "hook_resid", [40], cross_entropy)
    with pytest.raises(ValueError, match=r"unknown ablation mode 'one'; valid: \['zero', 'mean'\]"):
        ablate(model, batches, "hook_resid", [0], cross_entropy, mode="one")
    with pytest.raises(ValueError, match="too few to draw 20 others"):
        ablate(model, batches, "hook_resid", list(range(20)), cross_entropy)
    with pytest.raises(ValueError, match="has 32 units per position"):
        steer(model, batches[0].inputs, "hook_resid", torch.ones(7), [1.0], lambda lg: lg)
    with pytest.raises(ValueError, match=r"positions mask: expected shape \(8,\)"):
        steer(
            model,
            batches[0].inputs,
            "hook_resid",
            torch.ones(32),
            [1.0],
            lambda lg: lg,
            positions=torch.ones(3, dtype=torch.bool),
        )
