"""Feature inversion by optimisation through the frozen backbone (Mahendran & Vedaldi; DeepInversion's prior).

Find an image whose feature points the way the recovered one does: Adam on the pixels against
1 − cosine(φ(x), target), with a total-variation prior (natural images are piecewise smooth), a
box (pixels stay in [0, 1], by projection after every step) and DeepInversion's BatchNorm-statistics
prior: forward hooks on every BatchNorm layer of the backbone compare the mean and variance of the
layer's input over the image with the running statistics the backbone was trained with, so the
image's intermediate activations look like a real image's. Statistics are taken per image (over its
pixels), not over the batch, so targets optimised together stay independent. Several restarts per
target; the one whose feature comes closest wins. Started from the decoder's output it sharpens a
decoded image toward the exact feature; from noise it shows what the feature alone pins down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.inversion.knowledge import Encoder, unit


@dataclass(frozen=True)
class OptimiseSettings:
    steps: int = 100
    restarts: int = 1
    learning_rate: float = 0.05
    total_variation: float = 0.05
    batch_norm: float = 0.01
    seed: int = 0
    batch: int = 32  # targets optimised together


class BatchNormPrior:
    """Forward hooks on every BatchNorm layer: per-image distance of the input's channel statistics to the
    layer's running statistics, averaged over layers (one value per image)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.terms: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output) -> None:
        x = inputs[0].float()
        mean, var = x.mean(dim=(2, 3)), x.var(dim=(2, 3), unbiased=False)
        scale = x.shape[1] ** 0.5  # per-channel root-mean-square distance: layers of any width weigh alike
        self.terms.append((torch.linalg.vector_norm(mean - layer.running_mean, dim=1)
                           + torch.linalg.vector_norm(var - layer.running_var, dim=1)) / scale)

    def take(self) -> torch.Tensor:
        value = torch.stack(self.terms).mean(dim=0) if self.terms else torch.zeros(())
        self.terms = []
        return value

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image."""
    dx = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    dy = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    return dx + dy


def optimise_images(encoder: Encoder, targets: torch.Tensor, shape: tuple[int, int, int],
                    settings: OptimiseSettings = OptimiseSettings(), start: torch.Tensor | None = None,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) in [0, 1] on the CPU, feature cosine of each) for target features (N, d).
    ``shape`` is (C, H, W) with C = 1 for grey images; ``start`` (N, C, H, W) replaces the random start of
    the first restart."""
    from tqdm.auto import tqdm

    device = next(encoder.model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    best = torch.zeros(len(targets), *shape)
    best_cosine = torch.full((len(targets),), -2.0)
    prior = BatchNormPrior(encoder.model)
    chunks = range(0, len(targets), settings.batch)
    try:
        with tqdm(total=settings.restarts * len(chunks) * settings.steps, desc="optimise", unit="step",
                  disable=not progress, leave=False) as bar:
            for restart in range(settings.restarts):
                for first in chunks:
                    rows = slice(first, first + settings.batch)
                    goal = unit(targets[rows].float()).to(device)
                    init = torch.rand(len(goal), *shape, generator=generator) * 0.2 + 0.4
                    if start is not None and restart == 0:
                        init = start[rows].float()
                    images, cosine = _descend(encoder, goal, init.to(device), settings, prior, bar)
                    better = cosine > best_cosine[rows]
                    best[rows][better] = images[better]
                    best_cosine[rows] = torch.where(better, cosine, best_cosine[rows])
    finally:
        prior.remove()
    return best, best_cosine


def _descend(encoder: Encoder, goal: torch.Tensor, init: torch.Tensor, settings: OptimiseSettings,
             prior: BatchNormPrior, bar) -> tuple[torch.Tensor, torch.Tensor]:
    images = init.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([images], lr=settings.learning_rate)
    for _ in range(settings.steps):
        prior.take()
        cosine = F.cosine_similarity(encoder(images).float(), goal, dim=1)
        loss = (1 - cosine) + settings.total_variation * total_variation(images) + settings.batch_norm * prior.take()
        optimiser.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimiser.step()
        with torch.no_grad():
            images.clamp_(0.0, 1.0)
        bar.update(1)
    with torch.no_grad():
        prior.take()
        cosine = F.cosine_similarity(encoder(images).float(), goal, dim=1)
        prior.take()
    return images.detach().cpu(), cosine.cpu()
