"""Augmented copies of the public images: more (feature, image) pairs for the decoder from the same pool.

Small shifts, rotations and scalings keep an image of the same kind (a digit stays a digit) while
moving its strokes, so the decoder learns where things are from the feature rather than a handful of
public prototypes. Every draw comes from a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    copies: int = 7  # augmented copies of every public image, beside the image itself
    shift: float = 0.1  # largest shift, as a fraction of the side
    degrees: float = 12.0  # largest rotation
    scale: float = 0.1  # largest relative zoom in or out


def augmented(images: torch.Tensor, augmentation: Augmentation, seed: int) -> torch.Tensor:
    """The images followed by ``copies`` randomly shifted, rotated and scaled copies of each (float, [0, 1])."""
    generator = torch.Generator().manual_seed(seed)
    n = len(images)
    out = [images]
    for _ in range(augmentation.copies):
        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator) * 2 - 1

        angle = uniform(n) * augmentation.degrees * torch.pi / 180
        zoom = 1 + uniform(n) * augmentation.scale
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / zoom, -torch.sin(angle) / zoom
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / zoom, torch.cos(angle) / zoom
        theta[:, :, 2] = uniform(n, 2) * 2 * augmentation.shift  # affine_grid's coordinates span [-1, 1]
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out.append(F.grid_sample(images, grid, align_corners=False, padding_mode="border").clamp(0.0, 1.0))
    return torch.cat(out)
