"""The Mess3 hidden Markov process and its Bayesian belief state (Shai et al. 2024,
"Transformers represent belief state geometry in their residual stream"; the process is
from Marzen & Crutchfield 2017, "Nearly maximally predictive features and their dimensions").

Three hidden states, three tokens. With ``beta = (1 - alpha) / 2`` and ``y = 1 - 2x``, the
labelled transition matrices ``T^(a)[i, j] = P(emit a, go to j | in i)`` are

    T^(0) = [[a y, b x, b x],   T^(1) = [[b y, a x, b x],   T^(2) = [[b y, b x, a x],
             [a x, b y, b x],            [b x, a y, b x],            [b x, b y, a x],
             [a x, b x, b y]]            [b x, a x, b y]]            [b x, b x, a y]]

(``a`` = alpha, ``b`` = beta), as in Shai et al.'s code (``epsilon_transformers``
``Mess3(x=0.15, a=0.6)``). The chain stays with probability y, and the token names the
state it moves into with probability alpha. ``sum_a T^(a)`` is doubly stochastic: the
stationary distribution is uniform.

Sequence: the hidden chain starts from the stationary distribution; tokens ``x_0..x_T`` are
the emissions. Inputs ``x_0..x_{T-1}``, targets ``x_1..x_T`` (next-token prediction).
Latents ([batch, T]):
  ``belief`` [.., 3] float: ``P(state after emitting x_t | x_0..x_t)``, the forward filter
  ``eta_t = eta_{t-1} T^(x_t) / (eta_{t-1} T^(x_t) 1)`` from ``eta_{-1}`` = stationary; the
  optimal next-token distribution is ``P(x_{t+1} = a) = eta_t T^(a) 1``.
  ``hidden_state``: the true state after emitting ``x_t`` (the one that emits ``x_{t+1}``).
  ``step``.
Metrics: accuracy, ``bayes_ce`` (cross-entropy of the optimal predictor, the floor of the
loss) and ``kl_to_bayes`` (mean KL(optimal || model) over positions, nats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.base import Batch, Task
from tasks.targets import ProbeTarget, TuningMaps


def mess3_matrices(x: float, alpha: float) -> torch.Tensor:
    """[3 tokens, 3 from, 3 to] float64 labelled transition matrices of Mess3."""
    b, y = (1 - alpha) / 2, 1 - 2 * x
    T = torch.full((3, 3, 3), b * x, dtype=torch.float64)
    for a in range(3):
        for i in range(3):
            T[a, i, a] = alpha * (y if i == a else x)  # into state a: emitting a is likely
            if i != a:
                T[a, i, i] = b * y
    return T


def stationary(T: torch.Tensor) -> torch.Tensor:
    """Stationary distribution [n_states] of the chain ``sum_a T^(a)``."""
    M = T.sum(0)
    vals, vecs = torch.linalg.eig(M.T)
    v = vecs[:, (vals - 1).abs().argmin()].real
    return v / v.sum()


@dataclass
class Mess3Config:
    x: float = 0.15
    """Mixing parameter (Shai et al.: 0.15)."""
    alpha: float = 0.6
    """Emission sharpness (Shai et al.: 0.6)."""
    n_steps: int = 16
    """Tokens per sequence (inputs)."""

    def __post_init__(self):
        if not 0 < self.x < 0.5 or not 0 < self.alpha < 1:
            raise ValueError(
                f"need 0 < x < 0.5 and 0 < alpha < 1, got x={self.x}, alpha={self.alpha}"
            )
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {self.n_steps}")


class Mess3Task(Task):
    """Next-token prediction on Mess3, with the Bayesian belief state as the latent."""

    name = "mess3"

    def __init__(self, config: Mess3Config | None = None):
        self.config = config or Mess3Config()
        c = self.config
        self.T = mess3_matrices(c.x, c.alpha)  # [token, from, to] float64
        self.pi = stationary(self.T)
        self.d_vocab_in = self.d_vocab_out = 3
        self.seq_len = c.n_steps

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        B, n = batch_size, self.config.n_steps
        # joint over (token, next state) from each state: [from, token * 3 + to]
        joint = self.T.permute(1, 0, 2).reshape(3, 9)
        cum = joint.cumsum(1)
        cum[:, -1] = 1.0
        u0 = torch.rand(B, generator=generator, dtype=torch.float64)
        state = (self.pi.cumsum(0)[None] <= u0[:, None]).sum(1).clamp(max=2)
        u = torch.rand(B, n + 1, generator=generator, dtype=torch.float64)
        tokens = torch.empty(B, n + 1, dtype=torch.long)
        states = torch.empty(B, n + 1, dtype=torch.long)
        for t in range(n + 1):
            k = (cum[state] <= u[:, t, None]).sum(1).clamp(max=8)
            tokens[:, t], state = k // 3, k % 3
            states[:, t] = state
        belief = self.forward_filter(tokens[:, :-1])
        latents = {
            "belief": belief.float(),
            "hidden_state": states[:, :-1],
            "step": torch.arange(n).expand(B, -1).clone(),
        }
        return Batch(tokens[:, :-1].clone(), tokens[:, 1:].clone(), latents)

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return (
            ProbeTarget("belief", "regression"),
            ProbeTarget("hidden_state", "classification", n_classes=3),
        )

    def rate_maps(self) -> tuple[TuningMaps, ...]:
        return (TuningMaps("hidden_state", 3),)

    def forward_filter(self, tokens: torch.Tensor) -> torch.Tensor:
        """Beliefs [B, T, 3] (float64) after each token of ``tokens`` [B, T]."""
        eta = self.pi.expand(tokens.shape[0], -1)
        out = []
        for t in range(tokens.shape[1]):
            eta = torch.einsum("bi,bij->bj", eta, self.T[tokens[:, t]])
            eta = eta / eta.sum(1, keepdim=True)
            out.append(eta)
        return torch.stack(out, 1)

    def predictive(self, belief: torch.Tensor) -> torch.Tensor:
        """Optimal next-token distribution [..., 3] from beliefs [..., 3]."""
        return torch.einsum("...i,aij->...a", belief.double(), self.T.to(belief.device))

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        correct = logits.argmax(-1) == batch.targets
        p_opt = self.predictive(batch.latents["belief"].to(logits.device))
        log_model = torch.log_softmax(logits.double(), -1)
        bayes_ce = -torch.log(p_opt.gather(-1, batch.targets[..., None])).squeeze(-1)
        kl = (p_opt * (torch.log(p_opt) - log_model)).sum(-1)
        n = correct.numel()
        return {
            "accuracy": (correct.sum().item(), n),
            "bayes_ce": (bayes_ce.sum().item(), n),
            "kl_to_bayes": (kl.sum().item(), n),
        }
