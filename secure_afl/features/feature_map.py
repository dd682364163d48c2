"""The public map from backbone features to the matrix X that statistics are built from.

backbone features → optional random buffer (spec §3) → row-norm bound. Every client and the
centralized reference apply the same map, so the federated result can equal the pooled one;
the norm bound R is public and is what the protocols' declared bounds are derived from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secure_afl.errors import ConfigError
from secure_afl.features.buffer import RandomBuffer

ROW_NORMS = ("l2", "clip")


@dataclass(frozen=True)
class FeatureMap:
    """``norm='l2'`` rescales every row to norm ``max_norm``; ``'clip'`` only shrinks rows above it."""

    buffer: RandomBuffer | None = None
    norm: str = "l2"
    max_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.norm not in ROW_NORMS:
            raise ConfigError(f"unknown feature norm {self.norm!r}; choose one of {', '.join(ROW_NORMS)}")
        if not self.max_norm > 0:
            raise ConfigError(f"the feature norm bound must be positive, got {self.max_norm}")

    def out_dim(self, in_dim: int) -> int:
        return self.buffer.width if self.buffer is not None else in_dim

    def apply(self, features: torch.Tensor) -> tuple[torch.Tensor, float]:
        """X and the fraction of rows whose norm the bound changed (all of them under ``l2``)."""
        x = self.buffer.apply(features) if self.buffer is not None else features.float()
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        if self.norm == "l2":
            scale = self.max_norm / norms.clamp_min(torch.finfo(torch.float32).tiny)
            changed = norms != self.max_norm
        else:
            scale = (self.max_norm / norms.clamp_min(self.max_norm)).clamp_max(1.0)
            changed = norms > self.max_norm
        fraction = float(changed.float().mean()) if len(norms) else 0.0
        return x * scale, fraction
