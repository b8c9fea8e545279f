import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

import models.mamba.backends as backends
import models.mamba.dispatch as dispatch
from models import build_model
from models.mamba import MambaConfig, MambaLM, MambaMixer
from models.mamba.backends import BACKENDS, FastScan, ScanCall, describe
from models.mamba.compiled import compiled_kernels
from models.mamba.fused import fused_selective_scan
from models.mamba.native import _extension, native_conv_silu, native_error, native_scan
from models.mamba.scan import ChunkKernels, readout, reference_scan, selective_scan, transition

CONFIG = MambaConfig(d_model=16, n_layers=2, d_vocab=11, d_vocab_out=7, d_state=8, seed=0)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":  # the Triton kernels run through Triton's interpreter (read at their import)
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    """Every test starts with no scan backend tried, failed or warned about."""
    monkeypatch.setattr(dispatch, "VERDICTS", dispatch.Verdicts())


@pytest.fixture
def native():
    """Skip where the native scan cannot be built (found at test time: collecting this
    module builds and compiles nothing)."""
    error = native_error()
    if error is not None:
        pytest.skip(f"the native scan cannot be built here: {error}")


@pytest.fixture(scope="module")
def compiler():
    """Skip where torch.compile cannot build CPU kernels (no C++ compiler)."""
    try:
        torch.compile(lambda t: t.exp().sum(), fullgraph=True)(torch.ones(4))
    except Exception as error:
        pytest.skip(f"torch.compile cannot build CPU kernels here: {describe(error)}")


needs_native = pytest.mark.usefixtures("native")
needs_compiler = pytest.mark.usefixtures("compiler")


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


def scan_inputs(b=2, L=10, E=6, N=4, seed=1):
    """x, dt, A, B, C of a selective scan (all requiring grad) and output weights [b, L, E]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, E, generator=g)
    dt = torch.rand(b, L, E, generator=g) * 0.5
    A = -torch.rand(E, N, generator=g) * 3
    B, C = torch.randn(b, L, N, generator=g), torch.randn(b, L, N, generator=g)
    return [t.requires_grad_() for t in (x, dt, A, B, C)], torch.randn(b, L, E, generator=g)


def reference_readout(x, dt, A, B, C, signed):
    """y = C . h from the autograd step loop over materialised decays and drives."""
    decay = transition(dt, A, signed)[0]
    states = reference_scan(decay, (dt * x)[..., None] * B[:, :, None, :])
    return torch.einsum("blen,bln->ble", states, C)


def assert_scan_matches_reference(scan, signed, rtol=1e-5, atol=1e-5, **shape):
    """scan(x, dt, A, B, C) -> y against :func:`reference_readout`: y and the gradients of
    a weighted sum of y with respect to x, dt, A, B, C (inputs of :func:`scan_inputs`)."""
    inputs, weights = scan_inputs(**shape)
    want = reference_readout(*inputs, signed)
    want_grads = torch.autograd.grad((want * weights).sum(), inputs)
    got = scan(*inputs)
    grads = torch.autograd.grad((got * weights).sum(), inputs)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    for name, grad, want_grad in zip("x dt A B C".split(), grads, want_grads, strict=True):
        torch.testing.assert_close(grad, want_grad, rtol=rtol, atol=atol, msg=name)


def test_reference_scan_is_the_recurrence():
    """h_t = decay_t h_{t-1} + drive_t, h_{-1} = 0, against a hand-unrolled loop."""
    g = torch.Generator().manual_seed(0)
    decay, drive = torch.rand(2, 4, 3, 2, generator=g), torch.randn(2, 4, 3, 2, generator=g)
    h0 = drive[:, 0]
    h1 = decay[:, 1] * h0 + drive[:, 1]
    h2 = decay[:, 2] * h1 + drive[:, 2]
    h3 = decay[:, 3] * h2 + drive[:, 3]
    torch.testing.assert_close(reference_scan(decay, drive), torch.stack([h0, h1, h2, h3], 1))


def test_signed_transition_is_two_exp_minus_one_with_its_derivative():
    dt, A = torch.tensor([[0.5, 2.0]]), torch.tensor([[-1.0], [-3.0]])
    for signed, want in (
        (False, torch.exp(dt[..., None] * A)),
        (True, 2 * torch.exp(dt[..., None] * A) - 1),
    ):
        a, da = transition(dt, A, signed)
        torch.testing.assert_close(a, want)
        # da/d(dt A) by autograd through the definition
        z = (dt[..., None] * A).requires_grad_()
        (grad,) = torch.autograd.grad((2 * z.exp() - 1 if signed else z.exp()).sum(), z)
        torch.testing.assert_close(da, grad)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_selective_scan_equals_reference_across_chunk_boundaries(chunk, signed):
    """y = C . h and its gradients for x, dt, A, B, C, with the state and its gradient
    carried over chunk boundaries and a zero-padded last chunk (chunk 64 > L: one chunk)."""
    assert_scan_matches_reference(
        lambda *inputs: selective_scan(*inputs, signed=signed, chunk=chunk), signed
    )


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_fused_scan_equals_reference_across_chunk_boundaries(chunk, signed):
    """The eager training path: y and all input gradients, with the state and its gradient
    carried over chunk boundaries (chunk 64 > L: one chunk)."""
    assert_scan_matches_reference(
        lambda *inputs: fused_selective_scan(*inputs, signed=signed, chunk=chunk), signed
    )


def trajectory_readout(signed, chunk, kernels=None):
    """A scan through the state trajectory: selective_scan's states, read out by C . h
    (so every gradient reaches the inputs through the trajectory)."""

    def scan(x, dt, A, B, C):
        extra = {} if kernels is None else {"kernels": kernels}
        y, states = selective_scan(x, dt, A, B, C, signed, chunk, with_states=True, **extra)
        assert states.shape == (*x.shape, A.shape[1])
        return readout(states, C)

    return scan


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_state_trajectory_equals_reference_across_chunk_boundaries(chunk, signed):
    """The whole trajectory (read out by C . h) and its gradients."""
    assert_scan_matches_reference(trajectory_readout(signed, chunk), signed)


def test_gradients_from_both_the_output_and_the_trajectory():
    """A loss on y and on the states at once: the reverse recurrence adds both."""
    inputs, weights = scan_inputs()
    x, dt, A, B, C = inputs
    decay = transition(dt, A, True)[0]
    want_states = reference_scan(decay, (dt * x)[..., None] * B[:, :, None, :])
    want = torch.einsum("blen,bln->ble", want_states, C)
    state_weights = torch.randn(want_states.shape, generator=torch.Generator().manual_seed(2))
    want_loss = (want * weights).sum() + (want_states * state_weights).sum()
    y, states = selective_scan(*inputs, signed=True, chunk=3, with_states=True)
    torch.testing.assert_close(states, want_states)
    loss = (y * weights).sum() + (states * state_weights).sum()
    for got, want_grad in zip(
        torch.autograd.grad(loss, inputs), torch.autograd.grad(want_loss, inputs), strict=True
    ):
        torch.testing.assert_close(got, want_grad, rtol=1e-5, atol=1e-5)


def test_readout_is_the_contraction_over_the_state_axis():
    g = torch.Generator().manual_seed(0)
    states, C = torch.randn(3, 5, 4, 2, generator=g), torch.randn(3, 5, 2, generator=g)
    torch.testing.assert_close(readout(states, C), torch.einsum("blen,bln->ble", states, C))


def parity_inputs(bits: torch.Tensor):
    """A hand-built one-channel, one-state selective scan whose state holds the parity of
    ``bits`` [batch, L]: a start step drives h to 1 (x = 1, dt = 1, B = 1), then each bit
    has no drive (x = 0) and dt = 20 * bit with A = -1, so its transition is 1 for a 0 and
    exp(-20) (positive) or 2 exp(-20) - 1 ~ -1 (signed) for a 1."""
    batch, length = bits.shape
    dt = torch.cat([torch.ones(batch, 1), 20.0 * bits], 1)[..., None]  # [batch, L + 1, 1]
    x = torch.zeros_like(dt)
    x[:, 0] = 1
    ones = torch.ones(batch, length + 1, 1)
    return x, dt, -torch.ones(1, 1), ones, ones  # x, dt, A, B, C


def test_signed_transitions_flip_the_state_sign_and_compute_parity():
    """Parity needs a state whose sign flips: h_T = (-1)^(number of ones) with signed
    transitions, in every scan; with positive transitions a_t in (0, 1) and a non-negative
    drive, no choice of dt can make the state negative."""
    bits = torch.randint(0, 2, (64, 12), generator=torch.Generator().manual_seed(0)).float()
    parity = bits.sum(1) % 2
    x, dt, A, B, C = parity_inputs(bits)
    scans = {
        "reference": lambda signed: reference_readout(x, dt, A, B, C, signed),
        "selective": lambda signed: selective_scan(x, dt, A, B, C, signed, chunk=5),
        "fused": lambda signed: fused_selective_scan(x, dt, A, B, C, signed, chunk=5),
        "trajectory": lambda signed: selective_scan(
            x, dt, A, B, C, signed, chunk=5, with_states=True
        )[1][..., 0],
    }
    for name, scan in scans.items():
        signed_final = scan(True)[:, -1, 0]
        assert torch.equal(signed_final < 0, parity == 1), name
        torch.testing.assert_close(signed_final.abs(), torch.ones(64), atol=1e-6, rtol=0)
        assert (scan(False) >= 0).all(), name
    # positive transitions stay positive for any dt (here random, large and small)
    dt_any = torch.rand(dt.shape, generator=torch.Generator().manual_seed(1)) * 40
    assert (reference_readout(x.abs() + 0.1, dt_any, A, B, C, signed=False) > 0).all()


def test_model_backends_agree_on_logits_and_all_gradients_signed():
    config = MambaConfig(**{**CONFIG.__dict__, "eigenvalues": "signed"})
    assert_backends_agree(MambaLM(config), ("reference", "fast"))


def assert_backends_agree(model, scans, state_hooked=False, hooks=None, shape=(2, 13)):
    """Logits and every parameter gradient of ``model`` under each scan equal the first's,
    with ``hooks`` {name: hook} (or an identity hook on hook_ssm_state if ``state_hooked``),
    on tokens of ``shape``."""
    tokens = torch.randint(0, 11, shape, generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(next(model.parameters()).device)
    if state_hooked:
        hooks = {"blocks.0.mixer.hook_ssm_state": lambda act, hook: act}
    results = {}
    for scan in scans:
        model.zero_grad()
        logits = model.run_with_hooks(tokens, fwd_hooks=list((hooks or {}).items()), scan=scan)
        logits.square().mean().backward()
        results[scan] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    want_logits, want_grads = results[scans[0]]
    for scan in scans[1:]:
        logits, grads = results[scan]
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5, msg=scan)
        for name, grad in want_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("state_hooked", [False, True])
def test_model_backends_agree_on_logits_and_all_gradients(state_hooked):
    assert_backends_agree(MambaLM(CONFIG), ("reference", "fast"), state_hooked)


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
    for scan in ("reference", "fast") + (("native",) if native_error() is None else ()):
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


@pytest.mark.parametrize("patch", ["in_place", "new_tensor", "identity"])
def test_patching_the_state_trajectory_is_what_the_output_reads(patch):
    """A hook on hook_ssm_state that rewrites the trajectory (in place, or returning a new
    tensor) changes y = C . h + D x as the reference says, gradients included; one that
    returns it untouched changes nothing."""

    def in_place(act, hook):
        act[:, 3:] *= -2.0

    hooks = {
        "in_place": in_place,
        "new_tensor": lambda act, hook: torch.flip(act, dims=[1]),
        "identity": lambda act, hook: act,
    }
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(0))
    clean = model(tokens)
    hooked = {"blocks.0.mixer.hook_ssm_state": hooks[patch]}
    native = ("native",) if native_error() is None else ()
    assert_backends_agree(model, ("reference", "fast", *native), hooks=hooked)
    patched = model.run_with_hooks(tokens, fwd_hooks=list(hooked.items()), scan="fast")
    assert torch.allclose(patched, clean) == (patch == "identity")


def test_registry_builds_mamba_and_names_bad_scans():
    model = build_model("mamba", {"d_vocab": 11, "d_vocab_out": 7, "d_model": 16})
    _, cache = model.run_with_cache(torch.randint(0, 11, (2, 5)))
    assert cache["blocks.1.hook_resid_post"].shape == (2, 5, 16)
    with pytest.raises(ValueError, match=r"unknown scan 'parallel'; valid"):
        MambaConfig(scan="parallel")
    with pytest.raises(ValueError, match=r"unknown eigenvalues 'complex'; valid: \['positive'"):
        MambaConfig(eigenvalues="complex")


def test_cuda_request_without_cuda_warns_and_falls_back():
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (1, 6))
    with pytest.warns(
        UserWarning, match=r"scan='cuda': the cuda scan cannot run \(the model is on cpu"
    ):
        out = model(tokens, scan="cuda")
    torch.testing.assert_close(out, model(tokens, scan="reference"), rtol=1e-5, atol=1e-6)
    signed = MambaLM(MambaConfig(**{**CONFIG.__dict__, "eigenvalues": "signed"}))
    with pytest.warns(UserWarning, match=r"eigenvalues='signed' \(mamba-ssm's kernel only comp"):
        signed(tokens, scan="cuda")


def test_compiled_scan_that_cannot_compile_warns_and_uses_fast(monkeypatch):
    """A torch.compile failure at the first real call (here injected) is caught by the
    trial: one warning naming it, and the fast scan's results."""

    def fails(*args, **kwargs):
        raise RuntimeError("Dynamo does not know how to trace method __setitem__ of class list")

    monkeypatch.setattr(backends, "compiled_kernels", lambda: ChunkKernels(fails, fails, 4))
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (1, 6))
    with pytest.warns(UserWarning, match=r"scan='compiled': .*RuntimeError: Dynamo does not.*fast"):
        out = model(tokens, scan="compiled")
    torch.testing.assert_close(out, model(tokens, scan="fast"))


def test_fast_path_materialises_the_state_only_when_hooked(monkeypatch):
    """Without a hook on hook_ssm_state the fused scan runs (it returns only y); caching
    the state switches to the chunked scan that returns the trajectory."""
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (2, 6))
    calls = []

    def chunked(*args, with_states=False, **kwargs):
        calls.append(with_states)
        return selective_scan(*args, with_states=with_states, **kwargs)

    def fused(*args, **kwargs):
        calls.append("fused")
        return fused_selective_scan(*args, **kwargs)

    monkeypatch.setattr(backends, "selective_scan", chunked)
    monkeypatch.setattr(backends, "fused_selective_scan", fused)
    model(tokens, scan="fast")
    model.run_with_cache(
        tokens, names_filter=lambda name: name.endswith("hook_ssm_dt"), scan="fast"
    )
    assert calls == ["fused"] * 4
    _, cache = model.run_with_cache(tokens, scan="fast")
    assert calls[4:] == [True] * 2
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


@needs_compiler
@pytest.mark.parametrize("signed", [False, True])
def test_compiled_scans_equal_reference(signed):
    """The compiled chunk kernels (chunk 4, L 10: boundaries and a padded last chunk)."""
    kernels = compiled_kernels()
    assert_scan_matches_reference(
        lambda *inputs: selective_scan(*inputs, signed=signed, chunk=4, kernels=kernels), signed
    )
    assert_scan_matches_reference(trajectory_readout(signed, 4, kernels), signed)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("eigenvalues", ["positive", "signed"])
def test_compiled_model_agrees_with_reference(eigenvalues):
    """Logits and all parameter gradients of a whole model, with and without the state
    hooked (the default chunk of 16 steps)."""
    model = MambaLM(MambaConfig(**{**CONFIG.__dict__, "eigenvalues": eigenvalues}))
    for state_hooked in (False, True):
        assert_backends_agree(model, ("reference", "compiled"), state_hooked)


def test_keep_freed_memory_stops_large_blocks_faulting_in_again():
    """In a fresh interpreter, allocating, touching and freeing a 64 MB tensor faults all
    its pages in every time by default (glibc mmaps and unmaps it); after
    keep_freed_memory() the freed block is reused without a fault."""
    script = textwrap.dedent(
        """
        import resource, torch
        from lab.allocator import keep_freed_memory
        def faults_of_a_64_mb_tensor():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.ones(16 * 2**20)  # touched, freed at once
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        default = min(faults_of_a_64_mb_tensor() for _ in range(3))
        assert keep_freed_memory()
        # the heap grows by a few blocks (fragmentation) before every block is reused
        kept = max([faults_of_a_64_mb_tensor() for _ in range(16)][-4:])
        print(default, kept)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    default, kept = map(int, out.stdout.split())
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert default > pages // 2  # every page again
    assert kept < pages // 100  # the freed block is reused


@needs_native
def test_native_exp_is_as_accurate_as_torch_exp():
    """The kernels' inlined exp against float64 exp over its whole range, clamped outside."""
    v = torch.linspace(-87, 88, 1_000_001)
    want = torch.exp(v.double())
    assert ((_extension().exp(v).double() - want).abs() / want).max() < 3e-7
    ends = _extension().exp(torch.tensor([-1e4, -87.0, 0.0, 88.0, 1e4]))
    assert ends[2] == 1 and ends[0] == ends[1] > 0 and ends[-1] == ends[-2] < float("inf")


@needs_native
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shape", [{}, {"b": 3, "L": 37, "E": 20, "N": 5}, {"E": 16, "L": 1}])
def test_native_scan_equals_reference(signed, shape):
    """y and all input gradients: channels padded to the 16 lanes (E 6, 20) or not (16),
    one checkpoint segment (L 10, 1) or several with a partial last one (L 37)."""
    assert_scan_matches_reference(
        lambda *inputs: native_scan(*inputs, signed=signed), signed, **shape
    )

    def trajectory(x, dt, A, B, C):
        y, states = native_scan(x, dt, A, B, C, signed=signed, with_states=True)
        torch.testing.assert_close(y, readout(states, C))
        return readout(states, C)

    assert_scan_matches_reference(trajectory, signed, **shape)


@needs_native
def test_native_scan_adds_the_skip_term_with_its_gradients():
    """y = C . h + D x with D [E] (here 20 channels: padded lanes), against the reference
    readout plus D x: values and the gradients of x, dt, A, B, C and D."""
    inputs, weights = scan_inputs(L=19, E=20)
    D = torch.randn(20, generator=torch.Generator().manual_seed(3), requires_grad=True)
    want = reference_readout(*inputs, signed=False) + D * inputs[0]
    got = native_scan(*inputs, D)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want_grads = torch.autograd.grad((want * weights).sum(), [*inputs, D])
    grads = torch.autograd.grad((got * weights).sum(), [*inputs, D])
    for name, grad, want_grad in zip("x dt A B C D".split(), grads, want_grads, strict=True):
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5, msg=name)


@needs_native
def test_native_gradients_from_both_the_output_and_the_trajectory():
    inputs, weights = scan_inputs(L=21, E=20)
    x, dt, A, B, C = inputs
    want_states = reference_scan(transition(dt, A, True)[0], (dt * x)[..., None] * B[:, :, None])
    want = torch.einsum("blen,bln->ble", want_states, C)
    state_weights = torch.randn(want_states.shape, generator=torch.Generator().manual_seed(2))
    want_loss = (want * weights).sum() + (want_states * state_weights).sum()
    y, states = native_scan(*inputs, signed=True, with_states=True)
    torch.testing.assert_close(states, want_states)
    loss = (y * weights).sum() + (states * state_weights).sum()
    for got, want_grad in zip(
        torch.autograd.grad(loss, inputs), torch.autograd.grad(want_loss, inputs), strict=True
    ):
        torch.testing.assert_close(got, want_grad, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("length", "channels", "width"), [(9, 20, 4), (2, 16, 4), (7, 5, 3)])
def test_native_conv_silu_equals_conv1d(bias, length, channels, width):
    """silu(causal depthwise Conv1d) in float64 against the native kernel on a strided view
    (the x half of in_proj's output), values and gradients of input, weight and bias;
    lengths shorter than the kernel included."""
    conv = torch.nn.Conv1d(
        channels, channels, width, groups=channels, padding=width - 1, bias=bias
    ).double()
    xz = torch.randn(3, length, 2 * channels, dtype=torch.float64, requires_grad=True)
    want = F.silu(conv(xz[..., :channels].transpose(1, 2))[..., :length].transpose(1, 2))
    weights = torch.randn_like(want)
    params = [xz, conv.weight] + ([conv.bias] if bias else [])
    want_grads = torch.autograd.grad((want * weights).sum(), params)
    ours = [p.detach().float().requires_grad_() for p in params]
    got = native_conv_silu(ours[0][..., :channels], ours[1].squeeze(1), ours[2] if bias else None)
    grads = torch.autograd.grad((got * weights.float()).sum(), ours)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for got_grad, want_grad in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("eigenvalues", ["positive", "signed"])
@pytest.mark.parametrize("state_hooked", [False, True])
def test_native_model_agrees_with_reference(eigenvalues, state_hooked):
    model = MambaLM(MambaConfig(**{**CONFIG.__dict__, "eigenvalues": eigenvalues}))
    assert_backends_agree(model, ("reference", "native"), state_hooked)


@needs_native
def test_auto_scan_on_cpu_is_native_for_float32_and_fast_for_float64(monkeypatch):
    calls = []
    monkeypatch.setattr(
        backends, "native_scan", lambda *a, **k: calls.append("native") or native_scan(*a, **k)
    )
    tokens = torch.randint(0, 11, (2, 6))
    model = MambaLM(CONFIG)
    model(tokens)  # the native scan's trial calls it too
    calls.clear()
    model(tokens)
    assert calls == ["native"] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float64 takes the fast scan without a warning
        model.double()(tokens)
    assert calls == ["native"] * 2
    with pytest.warns(UserWarning, match=r"scan='native': .*float64, the native scan is float32"):
        model(tokens, scan="native")


def test_native_scan_that_cannot_be_built_warns_once_and_uses_fast(monkeypatch):
    monkeypatch.setattr(backends, "native_error", lambda: "CalledProcessError: no compiler")
    model = MambaLM(CONFIG)
    tokens = torch.randint(0, 11, (1, 6))
    with pytest.warns(UserWarning, match=r"scan='auto': .*cannot be built here: .*no compiler"):
        out = model(tokens)
    torch.testing.assert_close(out, model(tokens, scan="fast"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        model(tokens)
    with pytest.warns(UserWarning, match=r"scan='native': .*cannot be built"):
        model(tokens, scan="native")  # an explicit request says it too


# ---- initial states, the Triton scan, and choosing a backend


def full_scan_inputs(b=2, L=10, E=6, N=3, seed=1, device=DEVICE):
    """x, dt, A, B, C, D, h0 of a scan with its skip term and initial state (all requiring
    grad), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randn(b, L, E, generator=g),
        torch.rand(b, L, E, generator=g) * 0.5,
        -torch.rand(E, N, generator=g) * 3,
        torch.randn(b, L, N, generator=g),
        torch.randn(b, L, N, generator=g),
        torch.randn(E, generator=g),
        torch.randn(b, E, N, generator=g),
    ]
    return [t.to(device).requires_grad_() for t in inputs]


def reference_with_states(x, dt, A, B, C, D, h0, signed):
    """(y = C . h + D x, the trajectory h) of the autograd step loop from h_{-1} = h0."""
    states = reference_scan(transition(dt, A, signed)[0], (dt * x)[..., None] * B[:, :, None], h0)
    return torch.einsum("blen,bln->ble", states, C) + D * x, states


def assert_close_at_scale(got, want, rtol, atol, msg=None):
    """assert_close with ``atol`` relative to the largest |want| (when above 1): float32
    rounding of a long sum is relative to its largest terms, not to each element."""
    scale = max(1.0, float(want.detach().abs().max()))
    torch.testing.assert_close(got / scale, want / scale, rtol=rtol, atol=atol, msg=msg)


def assert_matches_reference_with_states(
    scan, signed, with_h0=True, rtol=1e-5, atol=1e-5, **shape
):  # fmt: skip
    """scan(x, dt, A, B, C, D, h0) -> (y, states or None) against the reference: values,
    and the gradients of every input (h0 included) of a weighted sum of y and, when
    returned, of the trajectory (to float32 rounding at each tensor's scale)."""
    inputs = full_scan_inputs(**shape)
    if not with_h0:
        inputs[-1] = None
    g = torch.Generator().manual_seed(7)
    want_y, want_states = reference_with_states(*inputs, signed)
    y_weights = torch.randn(want_y.shape, generator=g).to(want_y.device)
    state_weights = torch.randn(want_states.shape, generator=g).to(want_y.device)
    got_y, got_states = scan(*inputs)
    assert_close_at_scale(got_y, want_y, rtol, atol)
    want_loss, got_loss = (want_y * y_weights).sum(), (got_y * y_weights).sum()
    if got_states is not None:
        assert_close_at_scale(got_states, want_states, rtol, atol)
        want_loss = want_loss + (want_states * state_weights).sum()
        got_loss = got_loss + (got_states * state_weights).sum()
    wanted = [t for t in inputs if t is not None]
    names = [n for n, t in zip("x dt A B C D h0".split(), inputs, strict=True) if t is not None]
    grads = torch.autograd.grad(got_loss, wanted)
    want_grads = torch.autograd.grad(want_loss, wanted)
    for name, grad, want_grad in zip(names, grads, want_grads, strict=True):
        assert_close_at_scale(grad, want_grad, rtol, atol, msg=name)


@pytest.mark.parametrize("with_states", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_chunked_scan_from_an_initial_state_equals_reference(chunk, with_states):
    """h0's gradient is dL/dh_{-1} = a_0 g_0, carried back over every chunk boundary."""

    def scan(x, dt, A, B, C, D, h0):
        out = selective_scan(x, dt, A, B, C, True, chunk, with_states=with_states, h0=h0)
        y, states = out if with_states else (out, None)
        return y + D * x, states

    assert_matches_reference_with_states(scan, signed=True, device="cpu")


def test_reference_scan_from_an_initial_state_is_the_recurrence():
    g = torch.Generator().manual_seed(0)
    decay, drive = torch.rand(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    h0 = torch.randn(2, 2, 2, generator=g)
    h1 = decay[:, 0] * h0 + drive[:, 0]
    h2 = decay[:, 1] * h1 + drive[:, 1]
    h3 = decay[:, 2] * h2 + drive[:, 2]
    torch.testing.assert_close(reference_scan(decay, drive, h0), torch.stack([h1, h2, h3], 1))


@pytest.fixture(scope="module")
def triton_scan():
    """The Triton scan: compiled on CUDA, else run by Triton's interpreter on CPU."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from models.mamba.triton_scan import INTERPRETED, triton_scan

    if DEVICE == "cpu" and not INTERPRETED:
        pytest.skip("no CUDA, and Triton's interpreter was not on when the kernels loaded")
    return triton_scan


def triton_as(triton_scan, signed, with_states, **schedule):
    def scan(x, dt, A, B, C, D, h0):
        out = triton_scan(x, dt, A, B, C, D, signed, with_states, h0, **schedule)
        return out if with_states else (out, None)

    return scan


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("with_states", [False, True])
def test_triton_scan_equals_reference(triton_scan, signed, with_states):
    """Checkpoints every 4 steps over 10 (two chunk edges and a masked partial chunk),
    6 channels in programs of 4 (a partial block: B's and C's gradients summed over
    blocks), 3 states padded to 4, from an initial state: y, the trajectory and the
    gradients of x, dt, A, B, C, D and h0."""
    scan = triton_as(triton_scan, signed, with_states, chunk=4, block_e=4)
    assert_matches_reference_with_states(scan, signed)


@pytest.mark.parametrize("length", [1, 3, 4, 5, 8, 9])
def test_triton_scan_at_chunk_edges(triton_scan, length):
    """Lengths around multiples of the checkpoint interval (4), an odd channel count (5) in
    one block, from zeros and from an initial state."""
    scan = triton_as(triton_scan, signed=True, with_states=True, chunk=4)
    for with_h0 in (False, True):
        assert_matches_reference_with_states(scan, True, with_h0, L=length, E=5)


@pytest.mark.slow
@pytest.mark.parametrize("length", [15, 16, 17, 64, 255, 256])
@pytest.mark.parametrize("signed", [False, True])
def test_triton_scan_long_sequences(triton_scan, length, signed):
    """The default schedule (checkpoints every 16 steps) up to 256 steps, 7 channels."""
    for with_states in (False, True):
        scan = triton_as(triton_scan, signed, with_states)
        assert_matches_reference_with_states(scan, signed, L=length, E=7, N=4, b=1)


def test_triton_scan_gradient_through_the_trajectory_alone(triton_scan):
    """A loss on the trajectory only (no gradient reaches y): C gets none, the others get
    theirs through the states."""
    x, dt, A, B, C, D, h0 = full_scan_inputs(L=6, E=3)
    states = reference_with_states(x, dt, A, B, C, D, h0, False)[1]
    _, got = triton_scan(x, dt, A, B, C, D, False, True, h0, chunk=4)
    weights = torch.randn(states.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    inputs = [x, dt, A, B, h0]
    want = torch.autograd.grad((states * weights).sum(), inputs)
    for grad, want_grad in zip(
        torch.autograd.grad((got * weights).sum(), inputs), want, strict=True
    ):
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5)


COMPILE_FOR_HOPPER = """
import inspect, itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from models.mamba import triton_scan

kernels = {
    triton_scan._forward_kernel: ("SIGNED", "HAS_H0", "WITH_STATES"),
    triton_scan._backward_kernel: ("SIGNED", "HAS_GRAD_Y", "HAS_GRAD_STATES"),
}
for kernel, flags in kernels.items():
    names = list(inspect.signature(kernel.fn).parameters)
    for values in itertools.product([False, True], repeat=3):
        constants = dict(zip(flags, values)) | {"CHUNK": 16, "BLOCK_E": 16, "BLOCK_N": 16}
        signature = {
            n: "constexpr" if n in constants else "*fp32" if n.endswith("_ptr") else "i32"
            for n in names
        }
        constexprs = {(names.index(n),): v for n, v in constants.items()}
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], (kernel.__name__, constants)
print("compiled")
"""


def test_triton_kernels_compile_for_the_gpu(triton_scan):
    """The interpreter runs the kernels as Python; this compiles every variant (transitions,
    h0, trajectory, gradient set) to sm_90 machine code with Triton's own compiler and
    ptxas, no GPU needed, so code the GPU compiler rejects fails here too."""
    pytest.importorskip("triton.backends.nvidia", reason="Triton has no CUDA backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.getcwd()
    out = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_HOPPER], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize(("eigenvalues", "state_hooked"), [("positive", True), ("signed", False)])
def test_triton_model_agrees_with_reference(triton_scan, eigenvalues, state_hooked):
    """A whole model through the backend interface: logits and every parameter gradient
    (one small layer: the interpreter is slow)."""
    config = MambaConfig(
        d_model=8, n_layers=1, d_vocab=11, d_vocab_out=7, d_state=4, eigenvalues=eigenvalues
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the triton scan serves the call: no fallback
        model = MambaLM(config).to(DEVICE)
        assert_backends_agree(model, ("reference", "triton"), state_hooked, shape=(1, 7))


def call(device="cpu", dtype=torch.float32, signed=False, with_states=False, h0=False):
    return ScanCall(device, dtype, signed, with_states, h0, grad=True)


def test_scan_chains():
    """auto: mamba-ssm, triton, compiled, fast on CUDA; native, fast on CPU (fast alone
    for float64); a named backend: itself, then the rest of its device's auto chain or
    fast."""
    assert dispatch.scan_chain("auto", call("cuda")) == ("cuda", "triton", "compiled", "fast")
    assert dispatch.scan_chain("auto", call()) == ("native", "fast")
    assert dispatch.scan_chain("auto", call(dtype=torch.float64)) == ("fast",)
    assert dispatch.scan_chain("triton", call("cuda")) == ("triton", "compiled", "fast")
    assert dispatch.scan_chain("triton", call()) == ("triton", "fast")
    assert dispatch.scan_chain("native", call("cuda")) == ("native", "fast")
    assert dispatch.scan_chain("reference", call("cuda")) == ("reference",)
    with pytest.raises(ValueError, match=r"unknown scan 'gpu'; valid: \['auto', 'reference'"):
        dispatch.scan_chain("gpu", call())


def test_backends_refuse_calls_they_cannot_serve_and_say_why():
    native, mamba_ssm = BACKENDS["native"], BACKENDS["cuda"]
    assert "runs on CPU" in native.unusable(call("cuda"))
    assert "takes no initial state" in native.unusable(call(h0=True))
    assert "does not return the trajectory" in mamba_ssm.unusable(call("cuda", with_states=True))
    assert "takes no initial state" in mamba_ssm.unusable(call("cuda", h0=True))
    assert "float32" in BACKENDS["triton"].unusable(call("cuda", dtype=torch.float64))
    for name in ("reference", "fast", "compiled"):
        assert BACKENDS[name].unusable(call("cuda", signed=True, with_states=True, h0=True)) is None


class Broken(FastScan):
    """The fast scan, made to fail the way a kernel can: at build (``unusable``), in its
    forward or backward pass, with wrong results, or from its ``fail_from``-th call."""

    def __init__(self, stage: str, fail_from: int = 0):
        self.stage, self.fail_from, self.calls = stage, fail_from, 0

    def unusable(self, call):
        return "CalledProcessError: no compiler" if self.stage == "build" else None

    def scan(self, x, dt, A, B, C, D, h0, signed, with_states):
        self.calls += 1
        y, states = super().scan(x, dt, A, B, C, D, h0, signed, with_states)
        if self.calls <= self.fail_from:
            return y, states
        if self.stage == "forward":
            raise RuntimeError("triton.CompilationError: out of resources")
        if self.stage == "backward":
            return _FailsBackward.apply(y), states
        return y * 1.01, states  # "wrong"


class _FailsBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def train_steps(model, scan, steps=3):
    """Logits of the first step and every parameter after ``steps`` AdamW steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(next(model.parameters()).device)
    first = None
    for _ in range(steps):
        logits = model(tokens, scan=scan)
        first = logits.detach() if first is None else first
        optimizer.zero_grad()
        logits.square().mean().backward()
        optimizer.step()
    return first, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("stage", "reason"),
    [
        ("build", r"CalledProcessError: no compiler"),
        ("forward", r"scan forward failed: RuntimeError: triton.CompilationError"),
        ("backward", r"scan backward failed: RuntimeError: CUDA error: an illegal memory"),
        ("wrong", r"scan's y differs from the fast scan's by"),
    ],
)
def test_a_failing_backend_falls_back_to_fast_with_one_warning(monkeypatch, stage, reason):
    """A kernel that cannot be built, raises in its forward or backward pass, or computes
    something else, at its first use: training goes on with the fast scan's results and
    one warning that names the reason (not one per layer or step)."""
    monkeypatch.setitem(BACKENDS, "native", Broken(stage))
    with pytest.warns(UserWarning) as record:
        got = train_steps(MambaLM(CONFIG), "auto")
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert re.search(
        rf"scan='auto': the native scan cannot run \(.*{reason}.*\); using the fast", messages[0]
    )
    want = train_steps(MambaLM(CONFIG), "fast")
    for got_tensor, want_tensor in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
        torch.testing.assert_close(got_tensor, want_tensor, rtol=0, atol=0)


def test_a_backend_failing_after_its_trial_is_replaced_for_the_call_in_progress(monkeypatch):
    """A forward failure after a passed trial (e.g. a kernel that cannot compile for a new
    shape) is caught as well: the call is recomputed with the next backend, with one
    warning, and training goes on."""
    broken = Broken("forward", fail_from=2)  # the trial and the first layer's call pass
    monkeypatch.setitem(BACKENDS, "native", broken)
    with pytest.warns(UserWarning, match=r"native scan cannot run \(scan failed: RuntimeError"):
        train_steps(MambaLM(CONFIG), "auto")
    assert broken.calls == 3  # never asked again once it failed


@needs_native
def test_the_trial_runs_on_copies_and_changes_no_result(monkeypatch):
    """With a backend that passes its trial, results are those of the backend alone: the
    trial's extra forward and backward passes touch neither the inputs' gradients nor any
    random state."""
    model = MambaLM(CONFIG)
    first = train_steps(model, "native")
    training = ScanCall("cpu", torch.float32, False, False, False, grad=True)
    tried = {("native", op, training) for op in ("scan", "conv_silu")}
    monkeypatch.setattr(dispatch, "VERDICTS", dispatch.Verdicts(tried=tried))
    again = train_steps(MambaLM(CONFIG), "native")  # no trial this time
    for a, b in zip([first[0], *first[1]], [again[0], *again[1]], strict=True):
        assert torch.equal(a, b)


def test_collecting_the_tests_builds_and_compiles_nothing(tmp_path):
    """Collection (``pytest --collect-only``) in a fresh interpreter leaves an empty
    extension directory and an empty Inductor cache: nothing is built at import."""
    extensions, inductor = tmp_path / "extensions", tmp_path / "inductor"
    extensions.mkdir()
    inductor.mkdir()
    env = {
        **os.environ, "TORCH_EXTENSIONS_DIR": str(extensions),
        "TORCHINDUCTOR_CACHE_DIR": str(inductor), "PYTHONPATH": os.getcwd(),
    }  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         __file__],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert list(extensions.iterdir()) == [] and list(inductor.iterdir()) == []


# ---- on a GPU (make test-gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("signed", [False, True])
def test_triton_scan_on_cuda_equals_reference(triton_scan, signed):
    """The compiled kernels at a model's sizes: 300 steps (checkpoints every 16, a partial
    last chunk), 80 channels in several programs, 16 states, from an initial state."""
    for with_states in (False, True):
        scan = triton_as(triton_scan, signed, with_states)
        assert_matches_reference_with_states(
            scan, signed, rtol=1e-4, atol=1e-4, b=3, L=300, E=80, N=16, device="cuda"
        )


@pytest.mark.gpu
@pytest.mark.parametrize("eigenvalues", ["positive", "signed"])
def test_auto_trains_mamba_on_cuda_with_the_labs_training_loop(tmp_path, eigenvalues):
    """What died on a GPU machine without mamba-ssm: a Mamba run of models.train with
    scan "auto" trains to the end (mamba-ssm where it serves the call, else the Triton
    scan, which must pass its trial: no warning of a kernel that cannot run)."""
    from models.run import resolve_run
    from models.train import TrainConfig, train

    config = vars(TrainConfig(steps=30, log_every=10, eval_every=30, batch_size=16, device="cuda"))
    keys = {"experiment": "gpu", "study": "unit", "condition": "c", "seed": 0, "model": "mamba"}
    task = {"width": 3, "height": 3, "n_steps": 32}
    fields = {"d_model": 32, "eigenvalues": eigenvalues}
    run = resolve_run(keys, "graph_nav", task, "mamba", fields, None, config)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        summary = train(run, tmp_path / "run", progress=False)
    failed = [str(w.message) for w in record if "the triton scan cannot run" in str(w.message)]
    assert failed == []
    assert summary["steps"] == 30
    served = {name for name, op, call in dispatch.VERDICTS.tried if call.device == "cuda"}
    assert served & {"cuda", "triton"}, dispatch.VERDICTS


@pytest.mark.gpu
@pytest.mark.parametrize("state_hooked", [False, True])
def test_compiled_and_triton_scans_agree_with_reference_on_cuda(state_hooked):
    """Both GPU paths of the lab's own, through the model, with no fallback: the compiled
    chunk kernels must trace under this torch's Dynamo."""
    model = MambaLM(MambaConfig(**{**CONFIG.__dict__, "eigenvalues": "signed"})).cuda()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*cannot run")
        assert_backends_agree(model, ("reference", "triton", "compiled"), state_hooked)


@pytest.mark.gpu
def test_a_triton_kernel_failing_on_cuda_falls_back(monkeypatch, triton_scan):
    """A launch failure of the real backward kernel on CUDA, injected: the trial catches
    it, one warning names it, and the step runs on the next backend (compiled, here made
    unusable, then fast) with fast's results."""
    import models.mamba.triton_scan as kernels

    def fails(*args, **kwargs):
        raise RuntimeError("triton.runtime.errors.OutOfResources: shared memory")

    monkeypatch.setattr(kernels, "_backward_kernel", _Launcher(fails))
    monkeypatch.setitem(BACKENDS, "compiled", Broken("build"))
    model = MambaLM(CONFIG).cuda()
    with pytest.warns(UserWarning, match=r"the triton scan cannot run \(scan backward failed"):
        got = train_steps(model, "triton")
    want = train_steps(MambaLM(CONFIG).cuda(), "fast")
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
        torch.testing.assert_close(a, b)


class _Launcher:
    """Stands for a jit kernel: ``kernel[grid](...)`` calls ``launch``."""

    def __init__(self, launch):
        self.launch = launch

    def __getitem__(self, grid):
        return self.launch


@pytest.mark.parametrize(
    "scan", ["fast", "auto", "triton", pytest.param("compiled", marks=pytest.mark.slow)]
)
def test_forward_from_a_stepped_state_continues_the_sequence(request, scan):
    """model(rest, state=...) from the stepper's state after step t - 1 (patched there, so
    not a state the model reached by itself) gives the logits of the step-by-step rollout
    from step t on; gradients reach the given state as in the reference scan."""
    if scan in ("compiled", "triton"):  # skip where they cannot run
        request.getfixturevalue({"compiled": "compiler", "triton": "triton_scan"}[scan])
    from models.stepping import stepper_for
    from probes.causal.patching import rollout

    model = MambaLM(CONFIG).to(DEVICE if scan == "triton" else "cpu")
    device = next(model.parameters()).device
    x, t = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0)), 5
    x = x.to(device)
    names = list(stepper_for(model).state_shapes)
    h = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(1)).to(device)
    out = rollout(model, x, patches={t - 1: {"blocks.0.mixer.hook_ssm_state": h}}, record=names)
    state = {name: out.states[name][:, t - 1].requires_grad_() for name in names}
    got = model(x[:, t:], scan=scan, state=state)
    torch.testing.assert_close(got, out.logits[:, t:], atol=2e-5, rtol=1e-4)
    grads = torch.autograd.grad(got.square().sum(), list(state.values()))
    want = model(x[:, t:], scan="reference", state=state)
    want_grads = torch.autograd.grad(want.square().sum(), list(state.values()))
    for name, grad, want_grad in zip(names, grads, want_grads, strict=True):
        torch.testing.assert_close(grad, want_grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_wrong_state_is_named():
    model = MambaLM(CONFIG)
    x = torch.randint(0, 11, (2, 4))
    state = {"blocks.0.mixer.conv_state": torch.zeros(2, 32, 4)}
    with pytest.raises(KeyError, match=r"no 'blocks.0.mixer.hook_ssm_state'"):
        model(x, state=state)
    state["blocks.0.mixer.hook_ssm_state"] = torch.zeros(2, 8, 32)
    with pytest.raises(ValueError, match=r"expected shape \(2, 32, 8\) \(\[batch, d_inner, d_s"):
        model(x, state=state)
