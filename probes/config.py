"""Settings of the probing stage (``[probe]`` in a preset)."""

from __future__ import annotations

from dataclasses import dataclass

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

    def __post_init__(self):
        require(self.n_sequences >= 4, f"probe.n_sequences must be >= 4, got {self.n_sequences}")
        require(self.batch_size >= 1, f"probe.batch_size must be >= 1, got {self.batch_size}")
        require(
            0 < self.test_fraction < 1,
            f"probe.test_fraction must be in (0, 1), got {self.test_fraction}",
        )
        require(self.folds >= 2, f"probe.folds must be >= 2, got {self.folds}")
