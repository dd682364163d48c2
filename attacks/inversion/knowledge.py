"""What an inversion attacker holds besides the transcript: the public backbone and public images.

Turning a recovered feature back into pixels needs the feature extractor (public: the job names
the backbone and its weights) and images of the same kind that no client holds (the data set's
test split, disjoint from every client's data). The caller that opens the data set hands both
over as plain tensors, so the attack modules never import the data sets, the extractor or the
feature cache (tests/test_attacks.py walks their imports): the attacker gets exactly these public
images, never a training image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Encoder:
    """The job's frozen backbone as a differentiable map from [0, 1] images to features.

    ``identity`` names the model, its weights' hash, the input resolution and the normalisation:
    everything that determines the features (a decoder trained for one is keyed by it)."""

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resolution: int
    identity: str

    def to(self, device: torch.device) -> Encoder:
        return Encoder(self.model.to(device), self.mean, self.std, self.resolution, self.identity)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of (B, C, H, W) images in [0, 1] (C = 1 is taken as grey), resized as the extractor
        resizes pixels (bicubic, antialiased) and normalised; gradients flow to ``images``."""
        device = next(self.model.parameters()).device
        x = images.to(device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return self.model((x - mean) / std)

    def features(self, images: torch.Tensor, batch: int = 128, progress: bool = False) -> torch.Tensor:
        """Unit-norm features of many images, without gradients (float32, on the CPU)."""
        from tqdm.auto import tqdm

        with torch.inference_mode():
            rows = [self(images[i:i + batch]).float().cpu()
                    for i in tqdm(range(0, len(images), batch), desc="public features", unit="batch",
                                  disable=not progress, leave=False)]
        return unit(torch.cat(rows)) if rows else torch.zeros(0, 0)


@dataclass(frozen=True)
class PublicImages:
    """Images the attacker may hold, disjoint from every client's data, and their labels."""

    images: torch.Tensor  # uint8 (N, 3, H, W) at the data set's native resolution
    labels: np.ndarray
    description: str  # stated in every report: which images the attacker trained on

    @property
    def channels(self) -> int:
        return channels(self.images)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def unit(self) -> torch.Tensor:
        """float32 (N, channels, H, W) in [0, 1]."""
        return self.images[:, :self.channels].float() / 255.0

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{tuple(self.images.shape)}|".encode())
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Knowledge:
    """The public knowledge an inversion attack is given, and where it may keep what it trains."""

    encoder: Encoder
    public: PublicImages
    device: torch.device
    cache_dir: Path | None  # None: train every time, keep nothing
    progress: bool = False


def channels(images: torch.Tensor) -> int:
    """1 when every (N, 3, H, W) image has three equal channels (grey: decode or optimise one channel and repeat
    it), else 3."""
    return 1 if torch.equal(images[:, :1].expand_as(images), images) else 3


def unit(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm: recovered features are known only up to their norm (the public row-norm
    bound rescales them), so decoders and matching work on directions."""
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
