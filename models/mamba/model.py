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

Scans (``MambaConfig.scan`` or ``forward(..., scan=...)``), equal to float32 rounding:
"reference" (an autograd step loop, the definition), "fast" (plain PyTorch), "native" (C++
for CPUs), "compiled" (torch.compile'd chunk kernels), "triton" (the lab's Triton kernels
for GPUs), "cuda" (mamba-ssm's kernel) and "auto" (mamba-ssm, else triton, else compiled,
else fast on CUDA; native, else fast, on CPU). The backends are in
:mod:`models.mamba.backends`; the choice, the first-use trials and the fallbacks (one
warning per reason) in :mod:`models.mamba.dispatch`. Only what ``hook_ssm_state``
needs is asked of them: the trajectory exists only while a hook reads or patches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from models.embedding import InputEmbedding
from models.mamba.backends import ScanCall
from models.mamba.dispatch import SCANS, choose_scan
from models.mamba.scan import EIGENVALUES, readout


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
    built on first use), "compiled" (chunked, torch.compile'd), "triton" (the lab's GPU
    kernels), "cuda" (mamba-ssm kernels), or "auto": on a GPU mamba-ssm where it serves the
    call, else triton, else compiled, else fast; on CPU native where it builds, else fast
    (:mod:`models.mamba.dispatch`). ``forward(scan=...)`` overrides it per call."""
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

    def forward(
        self, hidden: torch.Tensor, scan: str | None = None, initial: tuple | None = None
    ) -> torch.Tensor:
        """[batch, L, d_model] -> [batch, L, d_model]; ``initial``: (conv window
        [batch, E, d_conv], SSM state [batch, E, N]) after a previous step to continue
        from (None: the start of a sequence)."""
        c = self.cfg
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # [batch, L, E] each
        x = self.hook_x(x)
        gate = self.hook_gate(F.silu(z))
        signed, with_states = c.eigenvalues == "signed", self._state_wanted()
        window, h0 = initial if initial is not None else (None, None)
        call = ScanCall(
            x.device.type, x.dtype, signed, with_states, initial_state=h0 is not None,
            grad=torch.is_grad_enabled() and x.requires_grad,
        )  # fmt: skip
        backend = choose_scan(scan or c.scan, call)
        if window is not None:  # the window's last d_conv - 1 inputs precede this call's
            x = torch.cat([rearrange(window[..., 1:], "b e k -> b k e").to(x.dtype), x], 1)
        x = backend.conv_silu(x, self.conv1d.weight, self.conv1d.bias)
        if window is not None:  # and their outputs are dropped
            x = x[:, c.d_conv - 1 :]
        x = self.hook_conv(x)  # [batch, L, E]
        dt_low, B, C = self.x_proj(x).split([c.rank, c.d_state, c.d_state], dim=-1)
        dt = self.hook_ssm_dt(F.softplus(self.dt_proj(dt_low)))  # [batch, L, E]
        B, C = self.hook_ssm_B(B), self.hook_ssm_C(C)  # [batch, L, N]
        A = -torch.exp(self.A_log.float())  # [E, N]
        y, states = backend.scan(x, dt, A, B, C, self.D, h0, signed, with_states)
        if with_states:  # [batch, L, E, N]
            version = states._version
            hooked = self.hook_ssm_state(states)
            if hooked is not states or hooked._version != version:  # patched: read it out
                y = readout(hooked, C) + self.D * x
        y = self.hook_ssm_out(y)  # C . h + D x
        return self.hook_out(self.out_proj(y * gate))

    def _state_wanted(self) -> bool:
        """Whether a hook reads or patches the state trajectory (so it must exist):
        TransformerLens hooks (``run_with_cache``, ``run_with_hooks``, ``add_hook``) or
        plain PyTorch hooks registered on the HookPoint."""
        hp = self.hook_ssm_state
        return bool(hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks)


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(RMSNorm(x))."""

    def __init__(self, c: MambaConfig):
        super().__init__()
        self.norm = nn.RMSNorm(c.d_model, eps=1e-5)
        self.mixer = MambaMixer(c)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self, x: torch.Tensor, scan: str | None = None, initial: tuple | None = None
    ) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        return self.hook_resid_post(x + self.mixer(self.norm(x), scan, initial))


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

    def forward(
        self, inputs: torch.Tensor, scan: str | None = None, state: dict | None = None
    ) -> torch.Tensor:
        """Logits [batch, pos, d_vocab_out] of token ids [batch, pos] or features
        [batch, pos, d_input]. ``state``: continue a sequence from the state after a
        previous step, named as :mod:`models.stepping` names it
        (``blocks.{i}.mixer.conv_state`` [batch, E, d_conv], ``blocks.{i}.mixer.hook_ssm_state``
        [batch, E, N]; a stepper's state, patched or not), in one pass at scan speed."""
        x = self.hook_embed(self.embed(inputs))
        for i, block in enumerate(self.blocks):
            x = block(x, scan, None if state is None else self._initial(state, i, x))
        return self.unembed(self.norm_f(x))

    def _initial(self, state: dict, layer: int, x: torch.Tensor) -> tuple:
        """(conv window, SSM state) of ``layer`` from ``state``, checked."""
        c, batch = self.cfg, x.shape[0]
        shapes = {
            f"blocks.{layer}.mixer.conv_state": ((batch, c.d_inner, c.d_conv), "d_conv"),
            f"blocks.{layer}.mixer.hook_ssm_state": ((batch, c.d_inner, c.d_state), "d_state"),
        }
        for name, (shape, last) in shapes.items():
            if name not in state:
                raise KeyError(f"state has no {name!r} (got {sorted(state)})")
            if tuple(state[name].shape) != shape:
                raise ValueError(
                    f"state {name!r}: expected shape {shape} ([batch, d_inner, {last}]), "
                    f"got {tuple(state[name].shape)}"
                )
        return tuple(state[name] for name in shapes)
