"""State patching through time, one API for the LSTM, Mamba and the transformer.

:func:`rollout` feeds a prompt step by step (:mod:`models.stepping`), optionally rewrites
named states at chosen steps, and then keeps going on the model's own predictions: a
task-supplied ``next_input(logits_t, step)`` turns the logits of one step into the input of
the next (no teacher forcing). "What does the network predict if its position code is moved
to node X at step t" is one call, given the state at step s of a run that was at X::

    h = "blocks.0.hook_resid_post"
    at_x = read_states(model, inputs_at_x, [h])[h][:, s]  # [batch, d_model]
    out = rollout(model, prompt[:, : t + 1], n_steps=10, next_input=choose_next,
                  patches={t: {h: at_x}})  # out.logits [batch, t + 11, d_vocab_out]

State names and what an edit means are documented in :mod:`models.stepping`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from models.stepping import Edits, stepper_for


@dataclass
class Rollout:
    logits: torch.Tensor
    """[batch, steps, d_vocab_out]: the prediction made at every step."""
    inputs: torch.Tensor
    """[batch, steps] (or [batch, steps, d_input]): the prompt, then the inputs the model's
    own predictions produced."""
    states: dict[str, torch.Tensor]
    """Recorded state name -> [batch, steps, *shape], the value after each step (after
    edits)."""


@torch.no_grad()
def rollout(
    model,
    prompt: torch.Tensor,
    n_steps: int = 0,
    next_input: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    patches: dict[int, Edits] | None = None,
    record: Iterable[str] = (),
) -> Rollout:
    """Step ``model`` through ``prompt`` ([batch, T] token ids or [batch, T, d_input]
    features), then ``n_steps`` more steps whose inputs are ``next_input(logits [batch,
    d_vocab_out], step)`` of the previous step's logits. ``patches`` maps a step to the
    edits made during it (``{name: value [batch, *shape] or callable}``); ``record`` names
    the states returned for every step."""
    stepper = stepper_for(model)
    patches = dict(patches or {})
    record = list(record)
    valid = sorted(stepper.state_shapes)
    for name in record + [n for edits in patches.values() for n in edits]:
        if name not in stepper.state_shapes:
            raise KeyError(f"{type(model).__name__} has no state {name!r}; valid: {valid}")
    if prompt.ndim not in (2, 3) or prompt.shape[1] == 0:
        raise ValueError(
            f"prompt: expected [batch, T>0] token ids or [batch, T>0, d_input] features, got "
            f"{tuple(prompt.shape)}"
        )
    total = prompt.shape[1] + n_steps
    if n_steps and next_input is None:
        raise ValueError("n_steps > 0 needs next_input (logits of a step -> the next input)")
    bad = sorted(s for s in patches if not 0 <= s < total)
    if bad:
        raise ValueError(f"patch step(s) {bad} outside the rollout's steps 0..{total - 1}")

    batch = prompt.shape[0]
    state = stepper.start(batch)
    logits, inputs, states = [], [], {name: [] for name in record}
    for step in range(total):
        if step < prompt.shape[1]:
            x = prompt[:, step]
        else:
            x = next_input(logits[-1], step)
            if x.shape != prompt.shape[:1] + prompt.shape[2:]:
                raise ValueError(
                    f"next_input returned shape {tuple(x.shape)} at step {step}; expected "
                    f"{tuple(prompt.shape[:1] + prompt.shape[2:])} (one step of the prompt)"
                )
            x = x.to(prompt.dtype)
        step_logits, state = stepper.step(state, x, patches.get(step, {}))
        logits.append(step_logits)
        inputs.append(x)
        values = stepper.read(state)
        for name in record:
            states[name].append(values[name])
    return Rollout(
        torch.stack(logits, 1),
        torch.stack(inputs, 1),
        {name: torch.stack(v, 1) for name, v in states.items()},
    )


def read_states(model, inputs: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The named states after every step of ``inputs`` (teacher forced): name ->
    [batch, pos, *shape]."""
    return rollout(model, inputs, record=names).states


def greedy_tokens(logits: torch.Tensor, step: int) -> torch.Tensor:
    """``next_input`` for tasks whose outputs are the next input token: the argmax."""
    return logits.argmax(-1)
