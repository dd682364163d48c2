"""The random feature buffer X = σ(f P + b) of spec §3.

P (and b) come from a public seed through torch's CPU generator, so every client, the server
and an attacker rebuild the identical matrix on any device; the seed is not a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from secure_afl.errors import ConfigError

ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish,
    "identity": lambda x: x,
}
DISTRIBUTIONS = ("normal", "uniform")


@dataclass(frozen=True)
class RandomBuffer:
    """σ(f P + b) with P entries of variance 1/d_in (so pre-activations keep the features' scale)
    and, when ``bias`` is set, b entries of unit variance."""

    width: int
    activation: str = "relu"
    seed: int = 0
    bias: bool = False
    distribution: str = "normal"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ConfigError(f"buffer width must be at least 1, got {self.width}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(f"unknown distribution {self.distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")

    def parameters(self, in_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(P, b) as float32 CPU tensors, a pure function of (seed, in_dim, width, distribution). Drawn once per
        process and copied out: DeepAFL's clients and evaluation ask for the same B_t hundreds of times."""
        projection, offset = _drawn(self, in_dim)
        return projection.clone(), None if offset is None else offset.clone()

    def _draw(self, generator: torch.Generator):
        if self.distribution == "normal":
            return lambda shape: torch.randn(shape, generator=generator)
        return lambda shape: (torch.rand(shape, generator=generator) * 2.0 - 1.0) * 3.0**0.5

    def apply(self, features: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """σ(features P + b) on the features' device, in float32, row batch by row batch."""
        projection, offset = self.parameters(features.shape[1])
        projection = projection.to(features.device)
        offset = offset.to(features.device) if offset is not None else None
        act = ACTIVATIONS[self.activation]
        out = torch.empty((features.shape[0], self.width), dtype=torch.float32, device=features.device)
        for start in range(0, features.shape[0], batch_size):
            pre = features[start : start + batch_size].float() @ projection
            out[start : start + batch_size] = act(pre + offset if offset is not None else pre)
        return out


@lru_cache(maxsize=8)
def _drawn(buffer: RandomBuffer, in_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(buffer.seed)
    draw = buffer._draw(generator)
    projection = draw((in_dim, buffer.width)) / in_dim**0.5
    offset = draw((buffer.width,)) if buffer.bias else None
    return projection, offset
