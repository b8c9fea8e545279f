"""Hand-built hooked models whose causal structure is known, for the causal tests."""

import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint


class PositionReader(HookedRootModule):
    """Token t (a position 0..n-1) -> h = E[t] [d] (hook_resid) -> decoded s = h . w ->
    logits_k = -(k - s)^2 / (2 sigma^2) over positions k.

    E[t] = t * w / |w|^2 + noise orthogonal to w, so s = t exactly: the position is carried
    by the single direction w / |w|, with gain |w| (s moves by |w| per unit step along it).
    """

    def __init__(self, n: int = 16, d: int = 256, gain: float = 0.5, sigma: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(d, generator=g)
        self.w = w * gain / w.norm()
        noise = torch.randn(n, d, generator=g)
        noise -= torch.outer(noise @ self.w, self.w) / (self.w @ self.w)
        self.E = torch.arange(n).float()[:, None] * self.w / (self.w @ self.w) + noise
        self.n, self.sigma = n, sigma
        self.hook_resid = HookPoint()
        self.setup()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.hook_resid(self.E[tokens]) @ self.w  # [batch, pos]
        k = torch.arange(self.n).float()
        return -((k - s[..., None]) ** 2) / (2 * self.sigma**2)

    @staticmethod
    def expected_position(logits: torch.Tensor) -> torch.Tensor:
        """The readout: the mean position under the predicted distribution [batch, pos]."""
        k = torch.arange(logits.shape[-1]).float()
        return (logits.softmax(-1) * k).sum(-1)


class TokenEcho(HookedRootModule):
    """Token t (0..n-1) -> h [d] (hook_resid) whose first n units are a code of t and
    whose other units are token-dependent noise of similar variance; the logits read only
    the first n units and predict t. Ablating the code units must hurt; others cannot."""

    def __init__(self, n: int = 4, d: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.E = torch.randn(n, d, generator=g)
        self.E[:, :n] = 3 * torch.eye(n) - 1
        self.n = n
        self.hook_resid = HookPoint()
        self.setup()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.hook_resid(self.E[tokens])
        return 4 * h[..., : self.n]
