import os

import pytest
import torch

import models.mamba.model as mamba_model
from models import build_model
from models.mamba import MambaConfig, MambaLM, MambaMixer
from models.mamba.scan import fast_scan, fused_selective_scan, reference_scan

CONFIG = MambaConfig(d_model=16, n_layers=2, d_vocab=11, d_vocab_out=7, d_state=8, seed=0)


def test_mixer_parameters_match_mamba_ssm():
    """Names and shapes of mamba_ssm.modules.mamba_simple.Mamba(d_model, d_state, d_conv,
    expand) with dt_rank = ceil(d_model / 16), bias=False, conv_bias=True."""
    d_model, d_state, d_conv, expand = 40, 16, 4, 2
    e, r = expand * d_model, 3
    published = {
        "in_proj.weight": (2 * e, d_model),
        "conv1d.weight": (e, 1, d_conv),
        "conv1d.bias": (e,),
        "x_proj.weight": (r + 2 * d_state, e),
        "dt_proj.weight": (e, r),
        "dt_proj.bias": (e,),
        "A_log": (e, d_state),
        "D": (e,),
        "out_proj.weight": (d_model, e),
    }
    mixer = MambaMixer(MambaConfig(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand))
    assert {k: tuple(v.shape) for k, v in mixer.state_dict().items()} == published
    # S4D-real init of A and inverse-softplus dt bias inside [dt_min, dt_max]
    torch.testing.assert_close(mixer.A_log.exp()[0], torch.arange(1.0, d_state + 1))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert (dt >= 0.001 - 1e-6).all() and (dt <= 0.1 + 1e-6).all()


def test_fast_scan_equals_reference_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    decay = torch.rand(3, 20, 5, 4, generator=g).requires_grad_()
    drive = torch.randn(3, 20, 5, 4, generator=g).requires_grad_()
    weights = torch.randn(3, 20, 5, 4, generator=g)
    outs = []
    for scan in (reference_scan, fast_scan):
        states = scan(decay, drive)
        grads = torch.autograd.grad((states * weights).sum(), (decay, drive))
        outs.append((states, *grads))
    for ref, fast in zip(*outs, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_fused_scan_equals_reference_across_chunk_boundaries(chunk):
    """y = C . h + its gradients for x, dt, A, B, C, with the state and its gradient
    carried over chunk boundaries (chunk 64 > L: one chunk)."""
    g = torch.Generator().manual_seed(1)
    b, L, E, N = 2, 10, 6, 4
    x = torch.randn(b, L, E, generator=g).requires_grad_()
    dt = (torch.rand(b, L, E, generator=g) * 0.5).requires_grad_()
    A = (-torch.rand(E, N, generator=g) * 3).requires_grad_()
    B = torch.randn(b, L, N, generator=g).requires_grad_()
    C = torch.randn(b, L, N, generator=g).requires_grad_()
    weights = torch.randn(b, L, E, generator=g)
    inputs = (x, dt, A, B, C)
    decay = torch.exp(dt[..., None] * A)
    states = reference_scan(decay, (dt * x)[..., None] * B[:, :, None, :])
    ref = torch.einsum("blen,bln->ble", states, C)
    ref_grads = torch.autograd.grad((ref * weights).sum(), inputs)
    y = fused_selective_scan(x, dt, A, B, C, chunk=chunk)
    grads = torch.autograd.grad((y * weights).sum(), inputs)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    for name, got, want in zip("x dt A B C".split(), grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_model_backends_agree_on_logits_and_all_gradients():
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (2, 13))
    results = {}
    for scan in ("reference", "fast"):
        model.zero_grad()
        logits = model(tokens, scan=scan)
        logits.square().mean().backward()
        results[scan] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["fast"][0], results["reference"][0], rtol=1e-5, atol=1e-6)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["fast"][1][name], grad, rtol=1e-4, atol=1e-6)


def test_mixer_matches_huggingface_mamba_mixer():
    """An independent implementation (transformers' MambaMixer) with the same weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import MambaConfig as HFConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMixer

    ours = MambaMixer(MambaConfig(d_model=16, d_state=8, d_conv=4, expand=2))
    hf_config = HFConfig(
        hidden_size=16,
        state_size=8,
        conv_kernel=4,
        expand=2,
        time_step_rank=1,
        use_bias=False,
        use_conv_bias=True,
    )
    theirs = HFMixer(hf_config, layer_idx=0)
    theirs.load_state_dict(ours.state_dict())
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    ref = theirs(hidden)
    params = dict(theirs.named_parameters())
    names = sorted(params)
    ref_grads = torch.autograd.grad(ref.square().sum(), [hidden] + [params[n] for n in names])
    ours_params = dict(ours.named_parameters())
    assert sorted(ours_params) == names  # the key mapping is the identity
    for scan in ("reference", "fast"):
        out = ours(hidden, scan=scan)
        grads = torch.autograd.grad(out.square().sum(), [hidden] + [ours_params[n] for n in names])
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for name, got, want in zip(["input"] + names, grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{scan} {name}")


def test_patching_dt_changes_the_output_as_the_recurrence_says():
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (2, 10))
    _, cache = model.run_with_cache(tokens)
    clean = model(tokens)
    # dt -> 0 freezes the state: h_t = h_{t-1} + 0, so the state stays at zero
    zero_dt = model.run_with_hooks(
        tokens,
        fwd_hooks=[
            ("blocks.0.mixer.hook_ssm_dt", lambda act, hook: torch.zeros_like(act)),
            ("blocks.0.mixer.hook_ssm_state", lambda act, hook: cache.__setitem__("patched", act)),
        ],
    )
    assert not torch.allclose(zero_dt, clean)
    assert cache["patched"].abs().max() == 0
    # and the state trajectory hook is the real state: C.h + D x reproduces the SSM output
    mixer = "blocks.1.mixer."
    y = torch.einsum("blen,bln->ble", cache[mixer + "hook_ssm_state"], cache[mixer + "hook_ssm_C"])
    y = y + model.blocks[1].mixer.D * cache[mixer + "hook_conv"]
    torch.testing.assert_close(y, cache[mixer + "hook_ssm_out"], rtol=1e-5, atol=1e-5)


def test_registry_builds_mamba_and_names_bad_scans():
    model = build_model("mamba", {"d_vocab": 11, "d_vocab_out": 7, "d_model": 16})
    _, cache = model.run_with_cache(torch.randint(0, 11, (2, 5)))
    assert cache["blocks.1.hook_resid_post"].shape == (2, 5, 16)
    with pytest.raises(ValueError, match=r"unknown scan 'parallel'; valid"):
        MambaConfig(scan="parallel")


def test_cuda_request_without_cuda_warns_and_falls_back():
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (1, 6))
    with pytest.warns(UserWarning, match="scan='cuda': no CUDA kernels"):
        out = model(tokens, scan="cuda")
    torch.testing.assert_close(out, model(tokens, scan="reference"), rtol=1e-5, atol=1e-6)


def test_fast_path_materialises_the_state_only_when_hooked(monkeypatch):
    """Without a hook on hook_ssm_state the fused scan never builds the
    [batch, pos, d_inner, d_state] trajectory; caching it switches to the trajectory scan."""
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (2, 6))
    calls = []

    def spy(decay, drive):
        calls.append(decay.shape)
        return fast_scan(decay, drive)

    monkeypatch.setattr(mamba_model, "fast_scan", spy)
    model(tokens, scan="fast")
    model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_ssm_dt"))
    assert calls == []
    _, cache = model.run_with_cache(tokens, scan="fast")
    assert calls == [(2, 6, 32, 8)] * 2
    assert cache["blocks.0.mixer.hook_ssm_state"].shape == (2, 6, 32, 8)


def test_hook_shapes_and_continuous_inputs():
    config = MambaConfig(d_model=16, n_layers=1, d_input=3, d_vocab_out=5, d_state=4, seed=None)
    model = MambaLM(config)
    features = torch.randn(2, 7, 3)
    logits, cache = model.run_with_cache(features)
    assert logits.shape == (2, 7, 5)
    expected = {
        "hook_embed": (2, 7, 16),
        "blocks.0.hook_resid_pre": (2, 7, 16),
        "blocks.0.hook_resid_post": (2, 7, 16),
        **{f"blocks.0.mixer.hook_{n}": (2, 7, 32) for n in "x gate conv ssm_dt ssm_out".split()},
        "blocks.0.mixer.hook_ssm_B": (2, 7, 4),
        "blocks.0.mixer.hook_ssm_C": (2, 7, 4),
        "blocks.0.mixer.hook_ssm_state": (2, 7, 32, 4),
        "blocks.0.mixer.hook_out": (2, 7, 16),
    }
    assert {k: tuple(v.shape) for k, v in cache.items()} == expected
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # seeded configs initialise identically
    a, b = MambaLM(CONFIG), MambaLM(CONFIG)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.gpu
def test_cuda_kernels_match_the_reference_scan():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("mamba_ssm", reason="mamba-ssm (CUDA kernels) is not installed")
    model = MambaLM(CONFIG).cuda()
    tokens = torch.randint(0, 11, (4, 64), device="cuda")
    results = {}
    for scan in ("cuda", "reference"):
        model.zero_grad()
        logits = model(tokens, scan=scan)
        logits.square().mean().backward()
        results[scan] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["cuda"][0], results["reference"][0], rtol=1e-4, atol=1e-4)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["cuda"][1][name], grad, rtol=1e-3, atol=1e-4, msg=name)
