"""Settings of the probing stage (``[probe]`` in a preset)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.config import require


@dataclass
class ProbeConfig:
    n_sequences: int = 256
    """Held-out sequences (environments) whose activations are cached, probed and censused."""
    batch_size: int = 64
    test_fraction: float = 0.25
    """Fraction of the cached environments held out to report scores on."""
    folds: int = 5
    """Cross-validation folds (grouped by environment) for choosing the penalty."""
    kinds: list[str] = field(default_factory=lambda: ["linear"])
    """Probes fit to every target: "linear" (ridge for regression and circular targets,
    multinomial logistic for classification) and/or "mlp" (one hidden layer)."""
    control: bool = True
    """Fit each probe to the target's control task too (Hewitt & Liang selectivity)."""
    logistic_steps: int = 2000
    """Adam steps of the logistic probe (at least; whole epochs)."""
    mlp_epochs: int = 50
    """Most epochs of the MLP probe (early stopping on a validation fold)."""

    def __post_init__(self):
        require(self.n_sequences >= 4, f"probe.n_sequences must be >= 4, got {self.n_sequences}")
        require(self.batch_size >= 1, f"probe.batch_size must be >= 1, got {self.batch_size}")
        require(
            0 < self.test_fraction < 1,
            f"probe.test_fraction must be in (0, 1), got {self.test_fraction}",
        )
        require(self.folds >= 2, f"probe.folds must be >= 2, got {self.folds}")
        bad = sorted(set(self.kinds) - {"linear", "mlp"})
        require(
            bool(self.kinds) and not bad,
            f"probe.kinds must list 'linear' and/or 'mlp', got {self.kinds}",
        )
        require(self.logistic_steps >= 1, "probe.logistic_steps must be >= 1")
        require(self.mlp_epochs >= 1, "probe.mlp_epochs must be >= 1")
