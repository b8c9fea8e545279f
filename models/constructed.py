"""Networks given a mechanism instead of trained: ground truth for what the census must not
call learned.

A random network already "has" codes that look like cells: units tuned to the current
symbol look like place cells inside one environment, recurrent dynamics integrate move
tokens into position, positional embeddings and decaying memories tile elapsed time. Each
construct here is one such mechanism and nothing else:

* ``sensory``: units are a random nonlinear function of the current input only,
  ``tanh(E e(x_t) + b)``.
* ``integrator``: units are random nonlinear functions of leaky running sums of the inputs,
  ``s_t = a * s_{t-1} + U (e(x_t) - mean e)``, units ``tanh(W norm(s_t) + b)``, with a spread
  of leaks: a quarter of the sums are perfect integrators (``a = 1``; on ``graph_nav`` they
  carry the displacement), the rest decaying memories with time constants log-uniform
  between 1 step and the sequence length (on ``interval_timing`` they tile time since a
  cue).
* ``clock``: units are functions of the step index t only: half are bumps at random times
  whose widths grow with the time, half random Fourier features of t.

``e(x_t)`` is the one-hot token, or the input vector standardised feature by feature. Inputs
enter the integrator centred, and its sums are standardised before the readout ``W``, by
statistics of a calibration batch of the task, so units are neither saturated nor linear
(an uncentred sum of one-hot tokens grows like t and saturates every unit).

Every construct is a ``HookedRootModule`` with the hooks the lab's caches read on every
network (``probes.cache.layer_hooks(1)``), all [batch, pos, n_units]:

  hook_embed                 the input side: the sensory and the integrator's input drive
                             (a function of x_t), the clock's Fourier features of t
  blocks.0.hook_resid_pre    the same tensor (the input of block 0)
  blocks.0.hook_state        integrator only: the running sums s_t
  blocks.0.hook_resid_post   the units (also the forward's output)

Built from (task, n_units, seed): the seed draws every random weight (and the calibration
batch), so two seeds are two independent draws of one mechanism, the way a trained network
and its untrained reference are two networks of one architecture. Constructs are never
trained: their weights are frozen parameters (they move with ``.to(device)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from tasks import Task

CALIBRATION_SEQUENCES = 64
"""Sequences of the task drawn (from the construct's seed) to standardise inputs and sums."""
PERFECT_FRACTION = 0.25
"""Share of the integrator's sums that do not leak (a = 1)."""
BIAS_STD = 0.5
"""Standard deviation of the units' biases (pre-activations have unit variance)."""
WIDTH_SLOPE = 0.25
"""Clock bumps: width (steps, standard deviation) = 1 + WIDTH_SLOPE * the bump's time."""


class ConstructBlock(nn.Module):
    """The shared hook names of block 0 (the constructs have one block), and
    ``hook_state`` where the construct has a state."""

    def __init__(self, with_state: bool):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        if with_state:
            self.hook_state = HookPoint()
        self.hook_resid_post = HookPoint()


class Construct(HookedRootModule):
    """A network given a mechanism: inputs [batch, pos] (token ids) or [batch, pos, d_input]
    -> units [batch, pos, n_units]. Subclasses draw their weights in :meth:`draw` and
    compute ``embed`` and ``units``."""

    name: str
    with_state = False

    def __init__(self, task: Task, n_units: int, seed: int):
        super().__init__()
        if not isinstance(n_units, int) or n_units < 2:
            raise ValueError(f"a construct needs n_units >= 2, got {n_units!r}")
        self.n_units, self.seed = n_units, seed
        self.d_vocab, self.d_input = task.d_vocab_in, task.d_input
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([ConstructBlock(self.with_state)])
        generator = torch.Generator().manual_seed(seed)
        self.draw(task, generator)
        self.setup()

    def draw(self, task: Task, generator: torch.Generator) -> None:
        raise NotImplementedError

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs -> [batch, pos, n_units], the input side (``hook_embed``)."""
        raise NotImplementedError

    def units(self, embedded: torch.Tensor) -> torch.Tensor:
        """The input side [batch, pos, n_units] -> the units [batch, pos, n_units]."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        block = self.blocks[0]
        x = block.hook_resid_pre(self.hook_embed(self.embed(inputs)))
        return block.hook_resid_post(self.units(x))

    # -- helpers shared by the constructs that read their input

    @property
    def d_encoded(self) -> int:
        return self.d_vocab if self.d_vocab is not None else self.d_input

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """e(x_t) [batch, pos, d_encoded]: the one-hot token, or the standardised input."""
        if self.d_vocab is not None:
            if inputs.dtype.is_floating_point or inputs.ndim != 2:
                raise ValueError(
                    f"{self.name}: expected token ids of shape [batch, pos] (int), got "
                    f"{tuple(inputs.shape)} {inputs.dtype}"
                )
            return nn.functional.one_hot(inputs.long(), self.d_vocab).to(self.input_mean.dtype)
        if inputs.ndim != 3 or inputs.shape[-1] != self.d_input:
            raise ValueError(
                f"{self.name}: expected features of shape [batch, pos, {self.d_input}], "
                f"got {tuple(inputs.shape)}"
            )
        return (inputs.to(self.input_mean.dtype) - self.feature_mean) / self.feature_std

    def calibrate_inputs(self, batch_inputs: torch.Tensor) -> None:
        """Frozen statistics of the calibration inputs: ``feature_mean``/``feature_std``
        (continuous inputs; identity for tokens) and ``input_mean``, the mean of e(x)."""
        d = self.d_encoded
        self.feature_mean = frozen(torch.zeros(d))
        self.feature_std = frozen(torch.ones(d))
        self.input_mean = frozen(torch.zeros(d))
        if self.d_vocab is None:
            flat = batch_inputs.reshape(-1, d).float()
            self.feature_mean = frozen(flat.mean(0))
            self.feature_std = frozen(standard_deviation(flat))
        self.input_mean = frozen(self.encode(batch_inputs).reshape(-1, d).mean(0))

    def input_weights(self, generator: torch.Generator) -> torch.Tensor:
        """[d_encoded, n_units] Gaussian weights giving each unit unit variance from e(x):
        variance 1 per token (one entry is on), 1 / d_input per standardised feature."""
        scale = 1.0 if self.d_vocab is not None else 1 / math.sqrt(self.d_input)
        return scale * torch.randn(self.d_encoded, self.n_units, generator=generator)


class SensoryNetwork(Construct):
    """Units ``tanh(E e(x_t) + b)``: a function of the current input only."""

    name = "sensory"

    def draw(self, task: Task, generator: torch.Generator) -> None:
        self.E = frozen(self.input_weights(generator))
        self.b = frozen(BIAS_STD * torch.randn(self.n_units, generator=generator))
        self.calibrate_inputs(calibration_inputs(task, generator))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs) @ self.E

    def units(self, embedded: torch.Tensor) -> torch.Tensor:
        return torch.tanh(embedded + self.b)


class IntegratorNetwork(Construct):
    """Units ``tanh(W norm(s_t) + b)`` of leaky running sums ``s_t = a * s_{t-1} + U (e(x_t) -
    mean e)`` (``s_{-1} = 0``); ``leak`` [n_units] is ``a``, exactly 1 for a quarter of the
    sums. ``norm`` standardises each sum by its calibration mean and deviation."""

    name = "integrator"
    with_state = True

    def draw(self, task: Task, generator: torch.Generator) -> None:
        n = self.n_units
        self.U = frozen(self.input_weights(generator))
        tau = torch.exp(torch.rand(n, generator=generator) * math.log(task.seq_len))
        leak = torch.exp(-1 / tau)
        perfect = torch.randperm(n, generator=generator)[: max(1, round(PERFECT_FRACTION * n))]
        leak[perfect] = 1.0
        self.leak = frozen(leak)
        self.W = frozen(torch.randn(n, n, generator=generator) / math.sqrt(n))
        self.b = frozen(BIAS_STD * torch.randn(n, generator=generator))
        inputs = calibration_inputs(task, generator)
        self.calibrate_inputs(inputs)
        self.state_mean = frozen(torch.zeros(n))
        self.state_std = frozen(torch.ones(n))
        sums = self.running_sums(self.embed(inputs)).reshape(-1, n)
        self.state_mean = frozen(sums.mean(0))
        self.state_std = frozen(standard_deviation(sums))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return (self.encode(inputs) - self.input_mean) @ self.U

    def running_sums(self, drive: torch.Tensor) -> torch.Tensor:
        """drive [batch, pos, n_units] -> s [batch, pos, n_units]."""
        state = torch.zeros_like(drive[:, 0])
        sums = []
        for step in drive.unbind(1):
            state = self.leak * state + step
            sums.append(state)
        return torch.stack(sums, 1)

    def units(self, embedded: torch.Tensor) -> torch.Tensor:
        sums = self.blocks[0].hook_state(self.running_sums(embedded))
        return torch.tanh((sums - self.state_mean) / self.state_std @ self.W + self.b)


class ClockNetwork(Construct):
    """Units of the step index t only: ``exp(-(t - c)^2 / 2 w^2)`` bumps at times c uniform
    over the sequence with widths ``w = 1 + WIDTH_SLOPE * c`` (first half of the units) and
    ``cos(omega t + phi)`` (the rest), frequencies log-uniform from one cycle per two
    sequence lengths to one per four steps. The input side is another draw of Fourier
    features (what a positional embedding gives); the inputs are never read."""

    name = "clock"

    def draw(self, task: Task, generator: torch.Generator) -> None:
        n, length = self.n_units, task.seq_len
        self.embed_frequency, self.embed_phase = fourier_draw(n, length, generator)
        n_bumps = n // 2
        self.centre = frozen(torch.rand(n_bumps, generator=generator) * length)
        self.width = frozen(1 + WIDTH_SLOPE * self.centre)
        self.frequency, self.phase = fourier_draw(n - n_bumps, length, generator)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        t = self.steps(inputs)
        return torch.cos(t * self.embed_frequency + self.embed_phase)

    def units(self, embedded: torch.Tensor) -> torch.Tensor:
        t = torch.arange(embedded.shape[1], dtype=embedded.dtype, device=embedded.device)
        t = t[None, :, None].expand(embedded.shape[0], -1, 1)
        bumps = torch.exp(-((t - self.centre) ** 2) / (2 * self.width**2))
        return torch.cat([bumps, torch.cos(t * self.frequency + self.phase)], -1)

    def steps(self, inputs: torch.Tensor) -> torch.Tensor:
        """[batch, pos, 1] the step index of every token."""
        if inputs.ndim not in (2, 3):
            raise ValueError(
                f"clock: expected inputs [batch, pos] or [batch, pos, d], got {tuple(inputs.shape)}"
            )
        batch, pos = inputs.shape[:2]
        t = torch.arange(pos, dtype=self.frequency.dtype, device=self.frequency.device)
        return t[None, :, None].expand(batch, -1, 1)


def fourier_draw(n: int, length: int, generator: torch.Generator):
    """Frozen frequencies and phases [n] of random Fourier features of the step index."""
    low, high = math.log(2 * math.pi / (2 * length)), math.log(2 * math.pi / 4)
    frequency = torch.exp(low + (high - low) * torch.rand(n, generator=generator))
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    return frozen(frequency), frozen(phase)


def calibration_inputs(task: Task, generator: torch.Generator) -> torch.Tensor:
    """Inputs of ``CALIBRATION_SEQUENCES`` sequences of ``task``."""
    return task.sample(CALIBRATION_SEQUENCES, generator).inputs


def standard_deviation(values: torch.Tensor) -> torch.Tensor:
    """[n, d] -> [d] standard deviations, 1 where a column is constant."""
    std = values.std(0)
    return torch.where(std > 1e-6 * (1 + values.abs().amax(0)), std, 1.0)


def frozen(value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.float(), requires_grad=False)


CONSTRUCTS: dict[str, type[Construct]] = {
    "sensory": SensoryNetwork,
    "integrator": IntegratorNetwork,
    "clock": ClockNetwork,
}
"""The constructed networks, by name (never trained; apart from the model registry)."""


def build_construct(name: str, task: Task, n_units: int = 64, seed: int = 0) -> Construct:
    """Construct ``name`` for ``task`` with ``n_units`` units, its weights drawn by ``seed``."""
    if name not in CONSTRUCTS:
        raise ValueError(f"unknown construct {name!r}; valid constructs: {sorted(CONSTRUCTS)}")
    return CONSTRUCTS[name](task, n_units, seed)
