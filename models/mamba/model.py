"""Hooked Mamba-1: mamba-ssm's layer with every SSM internal exposed as a hook.

Parameter names, shapes and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``
(in_proj, conv1d, x_proj, dt_proj with inverse-softplus bias, A_log with S4D-real init, D,
out_proj), so a mixer's ``state_dict`` loads into ``mamba_ssm.Mamba`` unchanged.

Hooks of ``blocks.{i}.mixer`` (L = pos, E = d_inner = expand * d_model, N = d_state):
  hook_x          [batch, L, E]     x branch after in_proj
  hook_gate       [batch, L, E]     SiLU(z), the multiplicative gate
  hook_conv       [batch, L, E]     causal depthwise conv of x, after SiLU (the scan input)
  hook_ssm_dt     [batch, L, E]     step size dt = softplus(dt_proj(.) + bias)
  hook_ssm_B      [batch, L, N]     input matrix B_t
  hook_ssm_C      [batch, L, N]     output matrix C_t
  hook_ssm_state  [batch, L, E, N]  the hidden state trajectory h_t
  hook_ssm_out    [batch, L, E]     y_t = C_t . h_t + D x_t, before gating
  hook_out        [batch, L, d_model]
and of the model: ``hook_embed``, ``blocks.{i}.hook_resid_pre``, ``blocks.{i}.hook_resid_post``
(all [batch, L, d_model]). Every hook can be read or patched and what it returns is used
downstream.

Transitions (``MambaConfig.eigenvalues``): "positive" is Mamba-1's a_t = exp(dt_t A) in
(0, 1); "signed" is a_t = 2 exp(dt_t A) - 1 in (-1, 1) (Grazzi et al. 2024), which lets a
diagonal SSM flip its state's sign, as parity and other state-tracking tasks need.

Scans (``MambaConfig.scan`` or ``forward(..., scan=...)``), equal to float32 rounding
(:mod:`models.mamba.scan`):
  "reference"  the recurrence as a Python loop under autograd (the executable definition)
  "fast"       plain PyTorch with hand-written backward passes: the fused scan of
               :mod:`models.mamba.fused`, which never stores more than the state trajectory
               for its backward, unless ``hook_ssm_state`` has a hook (``run_with_cache``,
               ``run_with_hooks``, ``add_hook``); then the chunked scan of
               :mod:`models.mamba.scan`, which returns the whole trajectory for the hook
  "native"     a C++ scan and causal conv + SiLU for CPUs (:mod:`models.mamba.native`),
               built for the machine on first use (about 30 s, then cached); float32 on
               CPU only, else it warns (naming the reason) and uses "fast"
  "compiled"   the same chunked scans with their chunk kernels compiled by torch.compile
               (C++ on CPU, Triton on CUDA; compiled once per shape, seconds each); where
               torch.compile cannot build kernels it warns (naming the reason) and uses "fast"
  "cuda"       mamba-ssm's ``selective_scan_fn`` (and causal-conv1d's ``causal_conv1d_fn``
               for the conv when installed); it cannot return the trajectory nor use signed
               eigenvalues, and needs CUDA tensors and an importable mamba-ssm: otherwise it
               warns (naming the reason) and uses "compiled" on CUDA, "fast" on CPU
  "auto"       "cuda" where usable, else "compiled" on CUDA (warning once why not "cuda");
               on CPU "native" where it builds, else "fast" (warning once why)
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from models.embedding import InputEmbedding
from models.mamba.compiled import compile_error, compiled_kernels
from models.mamba.fused import fused_selective_scan
from models.mamba.native import native_conv_silu, native_error, native_scan
from models.mamba.scan import (
    EAGER,
    EIGENVALUES,
    readout,
    reference_scan,
    selective_scan,
    transition,
)

SCANS = ("auto", "reference", "fast", "native", "compiled", "cuda")


@dataclass
class MambaConfig:
    """A Mamba-1 language model; defaults are mamba-ssm's ``Mamba`` layer defaults."""

    d_model: int = 64
    """Residual stream width."""
    n_layers: int = 2
    """Number of residual Mamba blocks."""
    d_vocab: int | None = None
    """Input token vocabulary (set from the task)."""
    d_input: int | None = None
    """Continuous input features (set from the task instead of d_vocab)."""
    d_vocab_out: int = 2
    """Output logits (set from the task)."""
    d_state: int = 16
    """SSM state size N per channel."""
    d_conv: int = 4
    """Width of the causal depthwise convolution."""
    expand: int = 2
    """d_inner = expand * d_model channels inside the mixer."""
    dt_rank: int | str = "auto"
    """Rank of the dt projection; "auto" is ceil(d_model / 16) as in mamba-ssm."""
    dt_min: float = 0.001
    """Initial step sizes are log-uniform in [dt_min, dt_max] ..."""
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    """... and at least dt_init_floor."""
    conv_bias: bool = True
    """Bias in conv1d."""
    bias: bool = False
    """Biases in in_proj and out_proj."""
    eigenvalues: str = "positive"
    """Transitions a_t = exp(dt A) in (0, 1) ("positive", Mamba-1) or 2 exp(dt A) - 1 in
    (-1, 1) ("signed", Grazzi et al. 2024: state tracking such as parity)."""
    scan: str = "auto"
    """"reference" (step loop, autograd), "fast" (plain PyTorch), "native" (C++ for CPUs,
    built on first use), "compiled" (chunked, torch.compile'd), "cuda" (mamba-ssm kernels),
    or "auto": cuda on a GPU when mamba-ssm imports, compiled on other GPUs, native on CPU
    where it builds (else fast). ``forward(scan=...)`` overrides it per call."""
    seed: int | None = 0
    """Seed of the parameter initialisation (None: the global RNG)."""

    def __post_init__(self):
        if self.scan not in SCANS:
            raise ValueError(f"unknown scan {self.scan!r}; valid: {list(SCANS)}")
        if self.eigenvalues not in EIGENVALUES:
            raise ValueError(
                f"unknown eigenvalues {self.eigenvalues!r}; valid: {list(EIGENVALUES)}"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


class MambaMixer(nn.Module):
    """One Mamba-1 layer: [batch, pos, d_model] -> [batch, pos, d_model]."""

    def __init__(self, c: MambaConfig):
        super().__init__()
        self.cfg = c
        e, n, r = c.d_inner, c.d_state, c.rank
        self.in_proj = nn.Linear(c.d_model, 2 * e, bias=c.bias)
        self.conv1d = nn.Conv1d(e, e, c.d_conv, groups=e, padding=c.d_conv - 1, bias=c.conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(r**-0.5), r**-0.5)
        dt = torch.exp(
            torch.rand(e) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
        ).clamp(min=c.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1)
        )
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, c.d_model, bias=c.bias)
        for name in (
            "x",
            "gate",
            "conv",
            "ssm_dt",
            "ssm_B",
            "ssm_C",
            "ssm_state",
            "ssm_out",
            "out",
        ):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, hidden: torch.Tensor, scan: str | None = None) -> torch.Tensor:
        c = self.cfg
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = self.hook_x(x)
        gate = self.hook_gate(F.silu(z))
        scan = self._choose_scan(scan or c.scan, x)
        conv1d_fn = _cuda_kernels("causal_conv1d_fn") if scan == "cuda" else None
        if conv1d_fn is not None:  # fused causal conv + SiLU, [batch, E, L] layout
            weight = self.conv1d.weight.squeeze(1)  # [E, d_conv]
            x = conv1d_fn(
                x.transpose(1, 2).contiguous(), weight, self.conv1d.bias, activation="silu"
            )
            x = self.hook_conv(x.transpose(1, 2))
        elif scan == "native":
            x = self.hook_conv(native_conv_silu(x, self.conv1d.weight.squeeze(1), self.conv1d.bias))
        else:
            x = self.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2).contiguous()
            x = self.hook_conv(F.silu(x))
        dt_low, B, C = self.x_proj(x).split([c.rank, c.d_state, c.d_state], dim=-1)
        dt = self.hook_ssm_dt(F.softplus(self.dt_proj(dt_low)))
        B, C = self.hook_ssm_B(B), self.hook_ssm_C(C)
        A = -torch.exp(self.A_log.float())  # [E, N]
        signed = c.eigenvalues == "signed"
        kernels = compiled_kernels() if scan == "compiled" else EAGER
        if scan == "cuda":
            y = _cuda_selective_scan(x, dt, A, B, C, self.D)
        elif scan == "reference":
            decay = transition(dt, A, signed)[0]  # [batch, L, E, N]
            states = reference_scan(decay, (dt * x)[..., None] * B[:, :, None, :])
            y = readout(self.hook_ssm_state(states), C) + self.D * x
        elif not self._state_wanted():
            if scan == "native":  # the kernel adds D x itself
                y = native_scan(x, dt, A, B, C, self.D, signed)
            elif scan == "fast":
                y = fused_selective_scan(x, dt, A, B, C, signed) + self.D * x
            else:
                y = selective_scan(x, dt, A, B, C, signed, kernels=kernels) + self.D * x
        else:
            if scan == "native":
                y, states = native_scan(x, dt, A, B, C, None, signed, with_states=True)
            else:
                y, states = selective_scan(
                    x, dt, A, B, C, signed, kernels=kernels, with_states=True
                )
            version = states._version
            hooked = self.hook_ssm_state(states)
            if hooked is not states or hooked._version != version:  # patched: read it out
                y = readout(hooked, C)
            y = y + self.D * x
        y = self.hook_ssm_out(y)
        return self.hook_out(self.out_proj(y * gate))

    def _state_wanted(self) -> bool:
        """Whether a hook reads or patches the state trajectory (so it must exist):
        TransformerLens hooks (``run_with_cache``, ``run_with_hooks``, ``add_hook``) or
        plain PyTorch hooks registered on the HookPoint."""
        hp = self.hook_ssm_state
        return bool(hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks)

    def _choose_scan(self, scan: str, x: torch.Tensor) -> str:
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; valid: {list(SCANS)}")
        requested = scan
        if scan in ("auto", "cuda"):
            reason = self._cuda_unusable(x)
            if reason is None:
                return "cuda"
            scan = "compiled" if x.is_cuda else "native"
            # an explicit request always warns; "auto" on a GPU once per reason
            if requested == "cuda" or (x.is_cuda and reason not in _WARNED):
                _WARNED.add(reason)
                warnings.warn(
                    f"scan={requested!r}: no CUDA kernels, {reason}; using the {scan} scan",
                    stacklevel=4,
                )
        if scan == "native":
            reason = _native_unusable(x)
            if reason is None:
                return "native"
            # "auto" warns once if the build fails, and not at all for a float64 or GPU
            # model (the fast scan is the one for those)
            if requested != "auto" or (native_error() is not None and reason not in _WARNED):
                _WARNED.add(reason)
                warnings.warn(
                    f"scan={requested!r}: the native scan cannot run ({reason}); "
                    "using the fast scan",
                    stacklevel=4,
                )
            return "fast"
        if scan == "compiled":
            error = compile_error(x.device.type)
            if error is not None:
                warnings.warn(
                    f"scan 'compiled': torch.compile cannot build kernels on "
                    f"{x.device.type} ({error}); using the fast scan",
                    stacklevel=4,
                )
                return "fast"
        return scan

    def _cuda_unusable(self, x: torch.Tensor) -> str | None:
        """Why mamba-ssm's kernel cannot run this call (None: it can)."""
        if self._state_wanted():
            return "hook_ssm_state is hooked (the kernel does not return the trajectory)"
        if self.cfg.eigenvalues != "positive":
            return "eigenvalues='signed' (the kernel only computes exp(dt A))"
        if not x.is_cuda:
            return "the model is not on a CUDA device"
        if _cuda_kernels("selective_scan_fn") is None:
            return f"mamba-ssm does not import ({_KERNEL_ERRORS['selective_scan_fn']})"
        return None


_KERNELS: dict[str, object] = {}
_KERNEL_ERRORS: dict[str, str] = {}
_WARNED: set[str] = set()
_KERNEL_IMPORTS = {
    "selective_scan_fn": "mamba_ssm.ops.selective_scan_interface",
    "causal_conv1d_fn": "causal_conv1d",
}


def _native_unusable(x: torch.Tensor) -> str | None:
    """Why the native scan cannot run on ``x`` (None: it can)."""
    if x.device.type != "cpu":
        return f"the model is on {x.device.type}, the native scan runs on CPU"
    if x.dtype != torch.float32:
        return f"the model is {x.dtype}, the native scan is float32 only"
    error = native_error()
    return None if error is None else f"it cannot be built here: {error}"


def _cuda_kernels(name: str):
    """mamba-ssm's ``selective_scan_fn`` or causal-conv1d's ``causal_conv1d_fn``, imported
    on first use; None where it does not import (no CUDA/Triton, not installed)."""
    if name not in _KERNELS:
        try:
            module = importlib.import_module(_KERNEL_IMPORTS[name])
            _KERNELS[name] = getattr(module, name)
        except Exception as error:  # ImportError, or CUDA/Triton errors raised at import
            _KERNELS[name] = None
            _KERNEL_ERRORS[name] = f"{type(error).__name__}: {error}"
    return _KERNELS[name]


def _cuda_selective_scan(x, dt, A, B, C, D) -> torch.Tensor:
    """y [batch, L, E] (including D x) from mamba-ssm's fused kernel, whose layouts are
    [batch, channels, L]."""
    y = _cuda_kernels("selective_scan_fn")(
        x.transpose(1, 2).contiguous(),
        dt.transpose(1, 2).contiguous(),
        A,
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
        D.float(),
    )
    return y.transpose(1, 2)


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(RMSNorm(x))."""

    def __init__(self, c: MambaConfig):
        super().__init__()
        self.norm = nn.RMSNorm(c.d_model, eps=1e-5)
        self.mixer = MambaMixer(c)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, scan: str | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        return self.hook_resid_post(x + self.mixer(self.norm(x), scan))


class MambaLM(HookedRootModule):
    """Embedding -> Mamba blocks -> RMSNorm -> linear readout; logits [batch, pos, d_vocab_out]."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.cfg = config
        with torch.random.fork_rng(devices=[], enabled=config.seed is not None):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            self.embed = InputEmbedding(config.d_model, config.d_vocab, config.d_input)
            self.blocks = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
            self.norm_f = nn.RMSNorm(config.d_model, eps=1e-5)
            self.unembed = nn.Linear(config.d_model, config.d_vocab_out)
        self.hook_embed = HookPoint()
        self.setup()

    def forward(self, inputs: torch.Tensor, scan: str | None = None) -> torch.Tensor:
        x = self.hook_embed(self.embed(inputs))
        for block in self.blocks:
            x = block(x, scan)
        return self.unembed(self.norm_f(x))
