"""Positional schemes of the transformer, each against its published definition."""

import math

import pytest
import torch
from transformer_lens import TransformerBridge, TransformerBridgeConfig

from models import build_model, count_parameters, fit_to_budget, model_config
from models.attention import POSITIONAL, alibi_slopes, hard_alibi_windows

FIELDS = {"d_vocab": 11, "d_vocab_out": 7, "d_model": 16, "n_heads": 4, "n_layers": 2, "n_ctx": 32}


def build(positional, **fields):
    return build_model("transformer", {**FIELDS, "positional": positional, **fields})


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'sinusoidal'.*learned.*nope.*rope.*alibi.*hard_alibi"):
        model_config("transformer", {"positional": "sinusoidal"})
    with pytest.raises(ValueError, match="n_heads >= 2"):
        model_config("transformer", {"positional": "hard_alibi", "n_heads": 1, "d_model": 8})


def test_alibi_slopes_are_press_et_al_geometric_sequence():
    """n a power of two: m_h = 2^(-8h/n), h = 1..n. Otherwise the slopes of the power of
    two below, then every other slope of the next power of two (Press et al. 2022)."""
    torch.testing.assert_close(alibi_slopes(8), 2.0 ** -torch.arange(1.0, 9))
    torch.testing.assert_close(alibi_slopes(4), 2.0 ** -torch.tensor([2.0, 4, 6, 8]))
    torch.testing.assert_close(alibi_slopes(6), 2.0 ** -torch.tensor([2.0, 4, 6, 8, 1, 3]))


def test_hard_alibi_windows_half_the_heads_rest_nope():
    assert hard_alibi_windows(4).tolist() == [1, 2, math.inf, math.inf]
    assert hard_alibi_windows(5).tolist() == [1, 2, math.inf, math.inf, math.inf]
    assert hard_alibi_windows(8).tolist() == [1, 2, 3, 4] + [math.inf] * 4


def test_bias_matrices_by_hand():
    inf = math.inf
    alibi = build("alibi").blocks[0].attn.original_component.positional_bias(3)
    m = 2.0 ** -torch.tensor([2.0, 4, 6, 8])  # 4 heads
    for h in range(4):
        expected = torch.tensor([[0, -inf, -inf], [-1, 0, -inf], [-2, -1, 0]]) * m[h]
        torch.testing.assert_close(alibi[h], expected)
    hard = build("hard_alibi").blocks[0].attn.original_component.positional_bias(3)
    causal = torch.tensor([[0, -inf, -inf], [0, 0, -inf], [0, 0, 0]])
    torch.testing.assert_close(
        hard[0], torch.tensor([[0, -inf, -inf], [-inf, 0, -inf], [-inf, -inf, 0]])
    )
    torch.testing.assert_close(hard[1], torch.tensor([[0, -inf, -inf], [0, 0, -inf], [-inf, 0, 0]]))
    torch.testing.assert_close(hard[2], causal)
    torch.testing.assert_close(hard[3], causal)
    for scheme in ("learned", "nope", "rope"):
        bias = build(scheme).blocks[0].attn.original_component.positional_bias(3)
        torch.testing.assert_close(bias.expand(4, 3, 3), causal.expand(4, 3, 3))


def rotate(x, position):
    """RoFormer (Su et al. 2021): rotate each pair (x_2i, x_2i+1) by position * theta_i,
    theta_i = 10000^(-2i/d). x [..., d]."""
    d = x.shape[-1]
    out = x.clone()
    for i in range(d // 2):
        angle = torch.tensor(position * 10000 ** (-2 * i / d))
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = a * angle.cos() - b * angle.sin()
        out[..., 2 * i + 1] = a * angle.sin() + b * angle.cos()
    return out


def reference_attention(attn, x, positional):
    """Attention output [batch, pos, d_model] by loops over heads, queries and visible keys,
    from the definitions: scores q_i.k_j / sqrt(d_head), RoPE rotations, ALiBi's
    -m_h (i - j) with m_h = 2^(-8h/n), Hard-ALiBi windows (head h < n/2 sees h + 1 tokens)."""
    n_heads = 4
    batch, n_pos, d_model = x.shape
    d_head = d_model // n_heads

    def project(linear):
        return (x @ linear.weight.T + linear.bias).reshape(batch, n_pos, n_heads, d_head)

    q, k, v = project(attn.q), project(attn.k), project(attn.v)
    z = torch.zeros(batch, n_pos, n_heads, d_head)
    for h in range(n_heads):
        for i in range(n_pos):
            keys = [j for j in range(i + 1) if positional != "hard_alibi" or h >= 2 or i - j <= h]
            scores = []
            for j in keys:
                qi, kj = q[:, i, h], k[:, j, h]
                if positional == "rope":
                    qi, kj = rotate(qi, i), rotate(kj, j)
                score = (qi * kj).sum(-1) / math.sqrt(d_head)
                if positional == "alibi":
                    score = score - 2 ** (-8 * (h + 1) / n_heads) * (i - j)
                scores.append(score)
            weights = torch.softmax(torch.stack(scores, -1), -1)
            z[:, i, h] = sum(weights[:, n, None] * v[:, j, h] for n, j in enumerate(keys))
    return z.reshape(batch, n_pos, d_model) @ attn.o.weight.T + attn.o.bias


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "explicit"])
def test_attention_matches_the_definition(positional, hooked):
    attn = build(positional).blocks[0].attn
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(0))
    if hooked:
        attn.hook_pattern.add_hook(lambda pattern, hook: None)
    out, _ = attn(x)
    torch.testing.assert_close(out, reference_attention(attn, x, positional), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_same_model_as_transformer_lens_native(positional):
    """learned and rope are TransformerLens's own schemes: same weights (same seed) and
    same logits as TransformerBridge.boot_native, whose attention is always explicit."""
    ours = build(positional, seed=3)
    native = TransformerBridge.boot_native(
        TransformerBridgeConfig(
            d_model=16,
            d_head=4,
            n_heads=4,
            n_layers=2,
            n_ctx=32,
            d_vocab=11,
            d_vocab_out=7,
            d_mlp=64,
            act_fn="gelu",
            normalization_type="LN",
            seed=3,
            positional_embedding_type="rotary" if positional == "rope" else "standard",
        )
    )
    ours_state, native_state = ours.state_dict(), native.state_dict()
    assert ours_state.keys() == native_state.keys()
    assert all(torch.equal(ours_state[key], native_state[key]) for key in ours_state)
    tokens = torch.randint(0, 11, (3, 20))
    torch.testing.assert_close(ours(tokens), native(tokens), atol=1e-5, rtol=1e-5)


def test_only_learned_has_a_position_table():
    sizes = {scheme: count_parameters(build(scheme)) for scheme in POSITIONAL}
    for scheme in POSITIONAL:
        model = build(scheme)
        has_table = "pos_embed.weight" in model.state_dict()
        assert has_table == (scheme == "learned"), scheme
        assert sizes["learned"] - sizes[scheme] == (0 if has_table else 32 * 16)
        _, cache = model.run_with_cache(torch.randint(0, 11, (1, 5)))
        assert ("hook_pos_embed" in cache) == has_table
        assert ("blocks.0.attn.hook_rot_q" in cache) == (scheme == "rope")


def test_budget_fitting_gives_the_table_back_as_width():
    widths = {}
    for scheme in POSITIONAL:
        config = model_config("transformer", {**FIELDS, "n_ctx": 256, "positional": scheme})
        sized = fit_to_budget("transformer", config, 40_000)
        assert abs(count_parameters(build_model("transformer", sized)) - 40_000) <= 4_000
        widths[scheme] = sized.d_model
    assert widths["rope"] % 8 == 0  # 4 heads of an even width
    assert all(widths[scheme] > widths["learned"] for scheme in POSITIONAL[1:]), widths


def test_rope_needs_an_even_head_width():
    with pytest.raises(ValueError, match=r"d_head.*even.*d_model=12, n_heads=4"):
        model_config("transformer", {"positional": "rope", "d_model": 12, "n_heads": 4})


@pytest.mark.parametrize("positional", POSITIONAL)
def test_n_ctx_bounds_the_sequence(positional):
    model = build(positional)
    model(torch.randint(0, 11, (1, 32)))
    with pytest.raises(ValueError, match="n_ctx=32"):
        model(torch.randint(0, 11, (1, 33)))
