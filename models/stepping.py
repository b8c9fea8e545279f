"""Run any registered architecture one time step at a time from an explicit state, so that
a state can be read and rewritten at a step and the edit carried forward in time. Each
architecture's :class:`Stepper` is registered beside it (``models.registry.STEPPERS``).

A hook edit in a full forward pass (``run_with_hooks``) cannot do this for a recurrent
model: the later steps were computed from the unedited value. A stepper reads the model's
own parameters (the model classes are not changed) and computes one step
``(state, input_t) -> (logits_t, state')``; an edit replaces a state's value where the step
computes it, and everything computed after it — deeper layers and the readout at the same
step, the recurrence at later steps — uses the replaced value.

State names and shapes (per sequence; tensors carry a leading batch dimension):

  LSTM (:class:`models.lstm.HookedLSTM`)
    blocks.{i}.hook_cell            [d_model]           cell state c_t of layer i
    blocks.{i}.hook_resid_post      [d_model]           hidden state h_t of layer i
  Mamba (:class:`models.mamba.MambaLM`)
    blocks.{i}.mixer.conv_state     [d_inner, d_conv]   the causal conv's window: the x branch
                                                        (``hook_x``) at steps t-d_conv+1..t,
                                                        oldest first (zeros before step 0)
    blocks.{i}.mixer.hook_ssm_state [d_inner, d_state]  SSM state h_t
  Transformer (TransformerLens ``TransformerBridge``)
    blocks.{i}.hook_resid_pre       [d_model]           residual stream into block i at step t
    blocks.{i}.hook_resid_post      [d_model]           residual stream out of block i

Names follow the models' hooks, so a value cached by ``run_with_cache`` at position t is
the state of that name after step t (the conv window is built from ``hook_x``). Order
within a step: LSTM layer i computes c_t, then h_t; a Mamba layer updates its conv window
(edits apply before the convolution reads it), then its SSM state.

The transformer has no fixed-size state: after step t it is the whole prefix. Its stepper
carries the inputs fed so far and the edits made so far; every step recomputes the prefix
with ``run_with_hooks`` and replays each edit at its position (its value resolved once, when
first made), so later positions attend to the edited residual stream. This is quadratic in
the sequence length, which is fine for these small models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformer_lens import TransformerBridge

from models.lstm import HookedLSTM
from models.mamba import MambaLM
from models.mamba.scan import transition

Edit = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
"""A replacement value [batch, *shape] (or [*shape], the same for every sequence), or a
function of the computed value returning the replacement (e.g. ``lambda h: h + delta``)."""
Edits = dict[str, Edit]


def apply_edit(name: str, value: torch.Tensor, edits: Edits) -> torch.Tensor:
    """``value`` [batch, *shape] after the edit named ``name`` in ``edits`` (if any)."""
    if name not in edits:
        return value
    edit = edits[name]
    new = edit(value) if callable(edit) else edit
    if not isinstance(new, torch.Tensor) or new.shape not in (value.shape, value.shape[1:]):
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(
            f"edit of {name!r}: expected a tensor of shape {tuple(value.shape)} "
            f"([batch, *state shape]) or {tuple(value.shape[1:])}, got {got}"
        )
    return new.to(value.dtype).expand_as(value).clone()


class Stepper:
    """One architecture's step function, registered beside it in
    ``models.registry.STEPPERS``. ``steps``: the model class it steps; ``state_shapes``:
    name -> shape without batch."""

    steps: type
    state_shapes: dict[str, tuple[int, ...]]

    def start(self, batch_size: int):
        """The state before the first step (what the full forward pass starts from)."""
        raise NotImplementedError

    def step(self, state, inputs: torch.Tensor, edits: Edits) -> tuple[torch.Tensor, object]:
        """Feed ``inputs`` ([batch] token ids or [batch, d_input] features) as the next time
        step; returns the logits [batch, d_vocab_out] and the new state."""
        raise NotImplementedError

    def read(self, state) -> dict[str, torch.Tensor]:
        """Every state value after the last step: name -> [batch, *shape]."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise if this stepper cannot be trusted with its model (nothing to check here)."""


class RecurrentStepper(Stepper):
    """A fixed-size state: name -> [batch, *shape], zeros before the first step."""

    model: HookedLSTM | MambaLM

    def start(self, batch_size: int) -> dict[str, torch.Tensor]:
        weight = self.model.unembed.weight
        return {
            name: weight.new_zeros(batch_size, *shape) for name, shape in self.state_shapes.items()
        }

    def read(self, state):
        return state

    @torch.no_grad()
    def check(self, length: int = 4) -> None:
        """Raise if stepping a short random sequence differs from the model's forward pass:
        the model computes something this stepper does not know (a new option, a changed
        layer), so its states could not be trusted."""
        cfg, weight = self.model.cfg, self.model.unembed.weight
        g = torch.Generator().manual_seed(0)
        if cfg.d_input is not None:
            inputs = torch.randn(2, length, cfg.d_input, generator=g).to(weight)
        else:
            inputs = torch.randint(cfg.d_vocab, (2, length), generator=g).to(weight.device)
        state, stepped = self.start(2), []
        for t in range(length):
            logits, state = self.step(state, inputs[:, t], {})
            stepped.append(logits)
        full = self.model(inputs)
        gap = float((torch.stack(stepped, 1) - full).abs().max())
        if not gap <= 1e-4 * (1 + float(full.abs().max())):
            raise NotImplementedError(
                f"stepping {type(self.model).__name__} does not reproduce its forward pass "
                f"(max |logit difference| {gap:.2g}): models/stepping.py must learn what the "
                "model now computes"
            )


class LSTMStepper(RecurrentStepper):
    steps = HookedLSTM

    def __init__(self, model: HookedLSTM):
        for block in model.blocks:
            lstm = block.lstm
            if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size or not lstm.bias:
                raise NotImplementedError(
                    "stepping supports one-layer, unidirectional nn.LSTM blocks with biases"
                )
        self.model = model
        d = model.cfg.d_model
        self.state_shapes = {}
        for i in range(len(model.blocks)):
            self.state_shapes[f"blocks.{i}.hook_cell"] = (d,)
            self.state_shapes[f"blocks.{i}.hook_resid_post"] = (d,)

    def step(self, state, inputs, edits):
        x = self.model.embed(inputs[:, None])[:, 0]  # [batch, d_model]
        new = {}
        for i, block in enumerate(self.model.blocks):
            lstm = block.lstm
            h_name, c_name = f"blocks.{i}.hook_resid_post", f"blocks.{i}.hook_cell"
            gates = (
                x @ lstm.weight_ih_l0.T
                + lstm.bias_ih_l0
                + state[h_name] @ lstm.weight_hh_l0.T
                + lstm.bias_hh_l0
            )
            in_gate, forget, cell, out_gate = gates.chunk(4, dim=-1)
            c = torch.sigmoid(forget) * state[c_name] + torch.sigmoid(in_gate) * torch.tanh(cell)
            new[c_name] = c = apply_edit(c_name, c, edits)
            h = torch.sigmoid(out_gate) * torch.tanh(c)
            new[h_name] = x = apply_edit(h_name, h, edits)
        return self.model.unembed(x), new


class MambaStepper(RecurrentStepper):
    """The recurrence of :class:`models.mamba.MambaMixer` (mamba-ssm's ``step``):
    conv window -> SiLU -> (dt, B, C) -> h_t = a_t h_{t-1} + dt B x_t -> C.h + D x, with
    a_t = exp(dt A) or, for ``eigenvalues="signed"``, 2 exp(dt A) - 1."""

    steps = MambaLM

    def __init__(self, model: MambaLM):
        self.model = model
        c = model.cfg
        self.state_shapes = {}
        for i in range(c.n_layers):
            self.state_shapes[f"blocks.{i}.mixer.conv_state"] = (c.d_inner, c.d_conv)
            self.state_shapes[f"blocks.{i}.mixer.hook_ssm_state"] = (c.d_inner, c.d_state)

    def step(self, state, inputs, edits):
        hidden = self.model.embed(inputs[:, None])[:, 0]  # [batch, d_model]
        new = {}
        for i, block in enumerate(self.model.blocks):
            mixer, c = block.mixer, block.mixer.cfg
            conv_name, ssm_name = f"blocks.{i}.mixer.conv_state", f"blocks.{i}.mixer.hook_ssm_state"
            x, z = mixer.in_proj(block.norm(hidden)).chunk(2, dim=-1)  # [batch, E] each
            window = torch.cat([state[conv_name][..., 1:], x[..., None]], dim=-1)
            new[conv_name] = window = apply_edit(conv_name, window, edits)  # [batch, E, d_conv]
            x = (window * mixer.conv1d.weight[:, 0]).sum(-1)
            if mixer.conv1d.bias is not None:
                x = x + mixer.conv1d.bias
            x = F.silu(x)
            dt_low, B, C = mixer.x_proj(x).split([c.rank, c.d_state, c.d_state], dim=-1)
            dt = F.softplus(mixer.dt_proj(dt_low))  # [batch, E]
            A = -torch.exp(mixer.A_log.float())  # [E, N]
            a, _ = transition(dt, A, signed=c.eigenvalues == "signed")  # [batch, E, N]
            h = a * state[ssm_name] + (dt * x)[..., None] * B[:, None]
            new[ssm_name] = h = apply_edit(ssm_name, h, edits)  # [batch, E, N]
            y = (h * C[:, None]).sum(-1) + mixer.D * x
            hidden = hidden + mixer.out_proj(y * F.silu(z))
        return self.model.unembed(self.model.norm_f(hidden)), new


@dataclass
class TransformerState:
    """The prefix fed so far and every edit made on it."""

    inputs: torch.Tensor | None = None
    """[batch, t] token ids or [batch, t, d_input] features."""
    edits: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    """name -> position -> the edited value [batch, d_model]."""
    last: dict[str, torch.Tensor] = field(default_factory=dict)
    """name -> value at the last position [batch, d_model] (after edits)."""


class TransformerStepper(Stepper):
    """Steps by the model's own forward pass over the prefix: nothing to check."""

    steps = TransformerBridge

    def __init__(self, model: TransformerBridge):
        self.model = model
        cfg = model.cfg
        self.n_ctx = cfg.n_ctx
        self.state_shapes = {}
        for i in range(cfg.n_layers):
            self.state_shapes[f"blocks.{i}.hook_resid_pre"] = (cfg.d_model,)
            self.state_shapes[f"blocks.{i}.hook_resid_post"] = (cfg.d_model,)

    def start(self, batch_size: int) -> TransformerState:
        return TransformerState()

    def step(self, state, inputs, edits):
        prefix = (
            inputs[:, None]
            if state.inputs is None
            else torch.cat([state.inputs, inputs[:, None]], dim=1)
        )
        position = prefix.shape[1] - 1
        if position >= self.n_ctx:
            raise ValueError(f"step {position} is beyond the transformer's n_ctx={self.n_ctx}")
        stored = {name: dict(by_pos) for name, by_pos in state.edits.items()}
        last = {}

        def hook_for(name: str):  # TransformerLens may call the hook by an alias's name
            def hook(act: torch.Tensor, hook) -> torch.Tensor:
                for pos, value in stored.get(name, {}).items():
                    act[:, pos] = value
                current = apply_edit(name, act[:, position], edits)
                if name in edits:
                    stored.setdefault(name, {})[position] = current
                    act[:, position] = current
                last[name] = current
                return act

            return hook

        logits = self.model.run_with_hooks(
            prefix, fwd_hooks=[(name, hook_for(name)) for name in self.state_shapes]
        )
        return logits[:, -1], TransformerState(prefix, stored, last)

    def read(self, state):
        return state.last


def stepper_for(model) -> Stepper:
    """The stepper of ``model``: the one registered for its class in
    ``models.registry.STEPPERS``, checked against the model's forward pass."""
    from models.registry import STEPPERS  # the registry imports this module

    for stepper_class in STEPPERS.values():
        if isinstance(model, stepper_class.steps):
            stepper = stepper_class(model)
            stepper.check()
            return stepper
    registered = ", ".join(f"{name} ({cls.steps.__name__})" for name, cls in STEPPERS.items())
    raise TypeError(
        f"no stepper for {type(model).__name__}; registered in models.registry.STEPPERS: "
        f"{registered}"
    )
