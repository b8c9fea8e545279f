"""An ensemble: models of one architecture and config that differ only in their weights
(the seeds of a run), trained as one batched model.

Their parameters are stacked with a leading member axis ([member, ...], leaf tensors of
their own) and the forward pass is ``torch.func.vmap`` over ``functional_call`` of one of
the models, so each operation runs once for all members, on each member's own weights and
inputs. Members never mix: every batched operation acts member by member, and what
PyTorch cannot batch runs once per member (:mod:`models.vmap`). Gradients are clipped by
each member's own global norm, and Adam(W) is elementwise, so a stacked optimizer steps
each member as its own would. :meth:`Ensemble.member` writes a member's weights back into
its own model and :meth:`Ensemble.member_optimizer_state` gives its optimizer state in the
layout of its own optimizer, so checkpoints are those of runs trained alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class Ensemble:
    """``models`` (same architecture and config, one per member) as one batched model.

    The models themselves keep their parameters, which go stale while the ensemble trains:
    :meth:`member` brings one up to date. The first model is the template the vmapped
    forward calls with each member's weights.
    """

    def __init__(self, models: list[nn.Module]):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        names = [[n for n, _ in m.named_parameters()] for m in models]
        if any(n != names[0] for n in names):
            raise ValueError("ensemble members must have the same parameters (same config)")
        if any(p.ndim == 0 for p in models[0].parameters()):
            raise ValueError("ensemble members' parameters must have at least one dimension")
        self.models = list(models)
        params, buffers = stack_module_state(self.models)
        self.params: dict[str, torch.Tensor] = params
        """Parameter name -> [member, ...] leaf tensor."""
        self.buffers: dict[str, torch.Tensor] = buffers
        # tie_weights=False: the TransformerLens bridge reaches some modules by two paths
        # (layers.i and blocks.i); tying would swap their tensors twice and restore once
        self._forward = vmap(
            lambda p, b, x: functional_call(self.models[0], (p, b), (x,), tie_weights=False)
        )

    def __len__(self) -> int:
        return len(self.models)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Outputs [member, batch, pos, ...] of inputs [member, batch, pos(, d_input)]: each
        member's model on its own inputs."""
        if inputs.shape[0] != len(self):
            raise ValueError(
                f"expected inputs of shape [{len(self)} members, batch, pos, ...], "
                f"got {tuple(inputs.shape)}"
            )
        return self._forward(self.params, self.buffers, inputs)

    def clip_grad_norms_(self, max_norm: float) -> torch.Tensor:
        """Scale each member's gradients as ``torch.nn.utils.clip_grad_norm_`` would scale
        them alone: by ``max_norm / (norm + 1e-6)`` where its global 2-norm exceeds
        ``max_norm``. Returns the norms before clipping [member]."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return torch.zeros(len(self))
        per_tensor = torch.stack(
            [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]
        )  # [tensor, member]
        norms = torch.linalg.vector_norm(per_tensor, dim=0)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
        return norms

    @torch.no_grad()
    def member(self, index: int) -> nn.Module:
        """Model ``index`` with its current weights from the ensemble."""
        model = self.models[index]
        for name, param in model.named_parameters():
            param.copy_(self.params[name][index])
        return model

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """The stacked parameters in the groups of :func:`models.train.make_optimizer`, in
        its order: decayed where a member's parameter has two or more dimensions."""
        params = [p for p in self.params.values() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim - 1 >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim - 1 < 2], "weight_decay": 0.0},
        ]

    def member_optimizer_state(self, optimizer: torch.optim.Optimizer, index: int) -> dict:
        """The state dict member ``index``'s own optimizer would have (same parameter
        indices and groups; per-parameter tensors sliced, shared ones such as Adam's
        ``step`` kept)."""
        state = optimizer.state_dict()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {
            "state": {
                i: {k: _slice(v, params[i], index) for k, v in s.items()}
                for i, s in state["state"].items()
            },
            "param_groups": state["param_groups"],
        }

    def load_optimizer_states(self, optimizer: torch.optim.Optimizer, states: list[dict]) -> None:
        """Load the members' own optimizer state dicts (in member order) into the stacked
        ``optimizer``: tensors of a member parameter's shape stacked, the others (Adam's
        ``step``) taken from the first member, which all must share."""
        if len(states) != len(self):
            raise ValueError(f"expected {len(self)} optimizer states, got {len(states)}")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        stacked = {}
        for i, first in states[0]["state"].items():
            entry = {}
            for key, value in first.items():
                values = [s["state"][i][key] for s in states]
                if torch.is_tensor(value) and value.shape == params[i].shape[1:]:
                    entry[key] = torch.stack(values)
                elif all(torch.equal(torch.as_tensor(v), torch.as_tensor(value)) for v in values):
                    entry[key] = value
                else:
                    raise ValueError(f"the members' optimizer states differ in {key!r}")
            stacked[i] = entry
        optimizer.load_state_dict({"state": stacked, "param_groups": states[0]["param_groups"]})

    def keep(self, indices: list[int]) -> None:
        """Keep only members ``indices`` (in that order): their models and weights. An
        optimizer over the old stacked parameters must be rebuilt (see
        :meth:`member_optimizer_state`, :meth:`load_optimizer_states`)."""
        self.models = [self.models[i] for i in indices]
        rows = torch.tensor(indices, device=next(iter(self.params.values())).device)
        self.params = {
            k: v.detach()[rows].requires_grad_(v.requires_grad) for k, v in self.params.items()
        }
        self.buffers = {k: v[rows] for k, v in self.buffers.items()}


def _slice(value, param: torch.Tensor, index: int):
    """Member ``index`` of an optimizer state value: sliced where it has the stacked
    parameter's shape."""
    if torch.is_tensor(value) and value.shape == param.shape:
        return value[index]
    return value
