"""The one input mechanism shared by the recurrent and state-space models."""

from __future__ import annotations

import torch
from torch import nn


class InputEmbedding(nn.Module):
    """Token ids [batch, pos] -> [batch, pos, d_model] (lookup table), or continuous
    features [batch, pos, d_input] -> [batch, pos, d_model] (linear projection).

    Exactly one of ``d_vocab`` / ``d_input`` is given.
    """

    def __init__(self, d_model: int, d_vocab: int | None = None, d_input: int | None = None):
        super().__init__()
        if (d_vocab is None) == (d_input is None):
            raise ValueError("give exactly one of d_vocab (token inputs) or d_input (features)")
        self.d_vocab, self.d_input = d_vocab, d_input
        if d_vocab is not None:
            self.W_E = nn.Embedding(d_vocab, d_model)
        else:
            self.W_in = nn.Linear(d_input, d_model)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.d_vocab is not None:
            if inputs.dtype.is_floating_point or inputs.ndim != 2:
                raise ValueError(
                    f"expected token ids of shape [batch, pos] (int), got {tuple(inputs.shape)} "
                    f"{inputs.dtype}"
                )
            return self.W_E(inputs)
        if inputs.ndim != 3 or inputs.shape[-1] != self.d_input:
            raise ValueError(
                f"expected features of shape [batch, pos, {self.d_input}], "
                f"got {tuple(inputs.shape)}"
            )
        return self.W_in(inputs.to(self.W_in.weight.dtype))
