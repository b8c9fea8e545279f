"""Fused attention when nothing hooks the pattern, explicit when something does: the same
model either way, under every positional scheme."""

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.attention import POSITIONAL

FIELDS = {"d_vocab": 11, "d_vocab_out": 7, "d_model": 16, "n_heads": 4, "n_layers": 2, "n_ctx": 32}
PATTERNS = [f"blocks.{i}.attn.hook_pattern" for i in range(2)]


def build(positional, **fields):
    return build_model("transformer", {**FIELDS, "positional": positional, **fields})


def read_only(act, hook):
    return None


@pytest.fixture
def sdpa_calls(monkeypatch):
    """How many times the fused kernel ran."""
    calls = []
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def loss_and_grads(model, tokens, fwd_hooks=()):
    model.zero_grad()
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten() % 7).backward()
    return logits, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("positional", POSITIONAL)
def test_fused_and_explicit_paths_agree_with_gradients(positional, sdpa_calls):
    model = build(positional)
    tokens = torch.randint(0, 11, (3, 17))
    fused, fused_grads = loss_and_grads(model, tokens)
    assert len(sdpa_calls) == 2  # one fused call per layer
    explicit, explicit_grads = loss_and_grads(model, tokens, [(n, read_only) for n in PATTERNS])
    assert len(sdpa_calls) == 2  # hooked: no fused call
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert fused_grads.keys() == explicit_grads.keys()
    for name, grad in fused_grads.items():
        assert grad.abs().sum() > 0 or "pos_embed" in name, name  # every weight is trained
        torch.testing.assert_close(grad, explicit_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("positional", POSITIONAL)
def test_cached_pattern_is_causal_and_normalised(positional, sdpa_calls):
    model = build(positional)
    tokens = torch.randint(0, 11, (2, 9))
    logits, cache = model.run_with_cache(tokens)
    assert not sdpa_calls
    torch.testing.assert_close(logits, model(tokens), atol=1e-5, rtol=1e-5)
    for i in range(2):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]
        scores = cache[f"blocks.{i}.attn.hook_attn_scores"]
        assert pattern.shape == scores.shape == (2, 4, 9, 9)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 9))
        visible = torch.ones(9, 9, dtype=torch.bool).tril().expand(4, 9, 9).clone()
        if positional == "hard_alibi":  # head 0 sees 1 token, head 1 sees 2, heads 2-3 all
            visible[0] = torch.eye(9, dtype=torch.bool)
            visible[1] = visible[1].triu(-1)
        assert (pattern[:, ~visible] == 0).all() and (pattern[:, visible] > 0).all()
        # the scores are the scores (-inf where not visible), not the pattern again
        assert (
            torch.isneginf(scores[:, ~visible]).all() and torch.isfinite(scores[:, visible]).all()
        )
        torch.testing.assert_close(scores.softmax(-1), pattern)


def test_a_plain_pytorch_hook_or_a_scores_hook_also_takes_the_explicit_path(sdpa_calls):
    model = build("alibi")
    tokens = torch.randint(0, 11, (2, 6))
    seen = []
    handle = model.blocks[1].attn.hook_pattern.register_forward_hook(
        lambda module, args, out: seen.append(out.shape)
    )
    model(tokens)
    handle.remove()
    assert seen == [(2, 4, 6, 6)] and len(sdpa_calls) == 1  # layer 0 fused, layer 1 explicit
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_attn_scores", read_only)])
    assert len(sdpa_calls) == 2  # then layer 0 explicit, layer 1 fused again
    model(tokens)
    assert len(sdpa_calls) == 4  # hooks gone: fused everywhere


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "explicit"])
def test_future_tokens_never_change_earlier_logits(positional, hooked):
    model = build(positional)
    hooks = [(n, read_only) for n in PATTERNS] if hooked else []
    tokens = torch.randint(0, 11, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1 + torch.randint(0, 9, (2, 5))) % 11
    before = model.run_with_hooks(tokens, fwd_hooks=hooks)
    after = model.run_with_hooks(changed, fwd_hooks=hooks)
    torch.testing.assert_close(before[:, :7], after[:, :7], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("hook", ["hook_pattern", "hook_attn_scores"])
def test_patching_the_pattern_or_scores_changes_the_output(positional, hook):
    model = build(positional)
    tokens = torch.randint(0, 11, (2, 8))
    clean = model(tokens)

    def attend_to_self(act, hook):
        eye = torch.eye(act.shape[-1], dtype=torch.bool)
        return act.masked_fill(~eye, 0.0 if hook.name.endswith("pattern") else float("-inf"))

    patched = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.0.attn.{hook}", attend_to_self)])
    assert not torch.allclose(clean, patched, atol=1e-4)
    torch.testing.assert_close(clean[:, 0], patched[:, 0])  # token 0 only ever sees itself


@pytest.mark.parametrize("positional", POSITIONAL)
def test_every_scheme_learns_a_toy_task(positional):
    """Predict the sequence's first token (drawn from 0..3; the rest from 4..10) at every
    position: attention has to find it by content."""
    torch.manual_seed(0)
    model = build(positional, d_model=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        tokens = torch.randint(4, 11, (32, 10))
        tokens[:, 0] = torch.randint(0, 4, (32,))
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, :1].expand(-1, 10).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0], losses


@pytest.mark.parametrize("positional", POSITIONAL)
def test_run_with_cache_gives_the_documented_shapes(positional):
    model = build(positional)
    logits, cache = model.run_with_cache(torch.randint(0, 11, (3, 5)))
    assert logits.shape == (3, 5, 7)
    shapes = {"hook_embed": (3, 5, 16)}
    for i in range(2):
        shapes |= {
            f"blocks.{i}.hook_resid_pre": (3, 5, 16),
            f"blocks.{i}.hook_resid_post": (3, 5, 16),
        }
        for name in ("q", "k", "v", "z"):
            shapes[f"blocks.{i}.attn.hook_{name}"] = (3, 5, 4, 4)  # [batch, pos, head, d_head]
        shapes[f"blocks.{i}.attn.hook_attn_scores"] = (3, 4, 5, 5)  # [batch, head, q, k]
        shapes[f"blocks.{i}.attn.hook_pattern"] = (3, 4, 5, 5)
        shapes[f"blocks.{i}.mlp.hook_post"] = (3, 5, 64)
        if positional == "rope":
            shapes[f"blocks.{i}.attn.hook_rot_q"] = shapes[f"blocks.{i}.attn.hook_rot_k"] = (
                3,
                5,
                4,
                4,
            )
    if positional == "learned":
        shapes["hook_pos_embed"] = (3, 5, 16)
    assert {name: tuple(cache[name].shape) for name in shapes} == shapes
