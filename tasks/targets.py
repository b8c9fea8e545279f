"""What a task declares about its latents, so that probing and the cell census need no
knowledge of any particular task.

A :class:`ProbeTarget` says which latent a probe decodes, at which tokens, and whether it is
a regression, a classification or a circular variable (decoded as its sine and cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

TARGET_KINDS = ("regression", "classification", "circular")


@dataclass(frozen=True)
class ProbeTarget:
    """One latent a probe decodes.

    latent:    name of the latent in :attr:`tasks.Batch.latents` ([batch, pos, ...]).
    kind:      "regression" (float or int values, any trailing shape), "classification"
               (int class ids ``0..n_classes-1``) or "circular" (an angle of the given
               ``period``, decoded as (cos, sin) of ``2 pi value / period``).
    at:        boolean latent selecting the tokens probed (None: every token).
    n_classes: number of classes (classification only).
    spatial:   a position (report proximity error beside the fit).
    period:    period of a circular variable (default 2 pi: radians).
    """

    latent: str
    kind: str = "regression"
    at: str | None = None
    n_classes: int | None = None
    spatial: bool = False
    period: float = 6.283185307179586

    def __post_init__(self):
        if self.kind not in TARGET_KINDS:
            raise ValueError(
                f"probe target {self.latent!r}: unknown kind {self.kind!r}; "
                f"valid: {list(TARGET_KINDS)}"
            )
        if (self.kind == "classification") != (self.n_classes is not None):
            raise ValueError(
                f"probe target {self.latent!r}: n_classes is required for classification "
                "targets and only for them"
            )
        if self.n_classes is not None and self.n_classes < 2:
            raise ValueError(f"probe target {self.latent!r}: n_classes must be >= 2")
        if self.period <= 0:
            raise ValueError(f"probe target {self.latent!r}: period must be positive")

    @property
    def name(self) -> str:
        """Key of the target in results tables: the latent, with ``@at`` when filtered."""
        return self.latent if self.at is None else f"{self.latent}@{self.at}"
