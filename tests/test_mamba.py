import os

import pytest
import torch

from models import build_model
from models.mamba import MambaConfig, MambaLM, MambaMixer
from models.mamba.scan import fast_scan, reference_scan

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
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), hidden)
    for scan in ("reference", "fast"):
        out = ours(hidden, scan=scan)
        (grad,) = torch.autograd.grad(out.square().sum(), hidden)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)


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
    with pytest.warns(UserWarning, match="scan='cuda' unavailable"):
        out = model(tokens, scan="cuda")
    torch.testing.assert_close(out, model(tokens, scan="reference"), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_kernels_match_the_reference_scan():
    pytest.importorskip("mamba_ssm")
    model = MambaLM(CONFIG).cuda()
    tokens = torch.randint(0, 11, (4, 64), device="cuda")
    torch.testing.assert_close(
        model(tokens, scan="cuda"), model(tokens, scan="reference"), rtol=1e-4, atol=1e-4
    )
