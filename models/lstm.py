"""LSTM baseline (the classic neuroscience RNN) as a TransformerLens ``HookedRootModule``.

Hooks (shapes for token inputs [batch, pos]):
  hook_embed                 [batch, pos, d_model]  input embedding
  blocks.{i}.hook_resid_pre  [batch, pos, d_model]  input to LSTM layer i
  blocks.{i}.hook_cell       [batch, pos, d_model]  cell state c_t of layer i
  blocks.{i}.hook_resid_post [batch, pos, d_model]  hidden state h_t of layer i (its output)
  hook_logits                [batch, pos, d_vocab_out]

Layers are stacked without residual connections (as in the neuroscience literature); the
"resid" names keep the probe code identical across architectures. The cell state is only
computed (step by step) when something hooks ``hook_cell``; otherwise each layer runs
cuDNN/ATen's fused ``nn.LSTM``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from models.embedding import InputEmbedding
from models.vmap import per_member


@dataclass
class LSTMConfig:
    d_model: int = 64
    """Hidden (and embedding) width."""
    n_layers: int = 1
    d_vocab: int | None = None
    """Input token vocabulary (set from the task)."""
    d_input: int | None = None
    """Continuous input features (set from the task instead of d_vocab)."""
    d_vocab_out: int = 2
    """Output logits (set from the task)."""
    seed: int = 0


class LSTMBlock(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)
        self.hook_resid_pre = HookPoint()
        self.hook_cell = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        if self.hook_cell.fwd_hooks or self.hook_cell.bwd_hooks:
            h, c = self._unrolled(x)
            self.hook_cell(c)
        else:
            h = fused_lstm(self.lstm, x, *lstm_weights(self.lstm))
        return self.hook_resid_post(h)

    def _unrolled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step-by-step LSTM with the same weights, returning h and c [batch, pos, d_model]."""
        lstm = self.lstm
        gates_x = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
        h = x.new_zeros(x.shape[0], lstm.hidden_size)
        c = torch.zeros_like(h)
        hs, cs = [], []
        for gx in gates_x.unbind(1):
            i, f, g, o = (gx + h @ lstm.weight_hh_l0.T).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
            cs.append(c)
        return torch.stack(hs, 1), torch.stack(cs, 1)


def lstm_weights(lstm: nn.LSTM) -> list[torch.Tensor]:
    """``lstm``'s weights as its kernel takes them (as set now: ``_flat_weights`` is only
    refreshed inside its forward, so under ``functional_call`` it is stale until then)."""
    return [getattr(lstm, name) for name in lstm._flat_weights_names]


@per_member
def fused_lstm(lstm: nn.LSTM, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
    """h [batch, pos, d_model] of ``lstm``'s fused kernel with ``weights`` (its own, or
    under vmap one ensemble member's: ``aten::lstm`` has no batching rule, so each member
    runs the kernel on its own weights)."""
    if all(w is own for w, own in zip(weights, lstm_weights(lstm), strict=True)):
        return lstm(x)[0]
    named = dict(zip(lstm._flat_weights_names, weights, strict=True))
    return torch.func.functional_call(lstm, named, (x,))[0]


class HookedLSTM(HookedRootModule):
    """Embedding -> n_layers LSTM layers -> linear readout. forward: [batch, pos] -> logits."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.cfg = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.embed = InputEmbedding(config.d_model, config.d_vocab, config.d_input)
            self.blocks = nn.ModuleList(LSTMBlock(config.d_model) for _ in range(config.n_layers))
            self.unembed = nn.Linear(config.d_model, config.d_vocab_out)
        self.hook_embed = HookPoint()
        self.hook_logits = HookPoint()
        self.setup()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(self.embed(inputs))
        for block in self.blocks:
            x = block(x)
        return self.hook_logits(self.unembed(x))
