"""Gradient matching: optimise dummy images until the gradient they give matches a client's update.

The three published recipes differ in distance, optimiser, prior and labels:

- **DLG** (Zhu et al., NeurIPS 2019): L2 distance between gradients, L-BFGS, images and soft labels
  optimised jointly from random noise, no prior;
- **iDLG** (Zhao et al., 2020): DLG with the label read analytically off the last layer's gradient
  first (attacks/gradient/labels.py), so only the images are optimised;
- **Inverting Gradients** (Geiping et al., NeurIPS 2020): cosine distance (scale-free, so it also
  fits a FedAvg update, whose magnitude depends on the local steps), total-variation prior, Adam on
  the sign of the gradient with step decay at 3/8, 5/8 and 7/8 of the run, images kept in the box of
  valid pixels; labels inferred as in iDLG.

Images live in the model's input space (normalised 32 px pixels); the evaluator maps them back to
[0, 1] with the public normalisation. Every random draw (the starting noise) takes the attack's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from attacks.gradient.labels import infer_labels
from attacks.gradient.updates import ClientUpdate
from secure_afl.algorithms.convnet import CHANNELS, IMAGE_SIZE, box



@dataclass(frozen=True)
class Recipe:
    distance: str  # l2 or cosine
    optimizer: str  # lbfgs or adam
    joint_labels: bool  # soft labels optimised with the images (DLG) or inferred first (iDLG, IG)
    steps: int
    lr: float
    tv: float = 0.0  # weight of the total-variation prior
    boxed: bool = False  # keep the images inside the valid pixel range after every step
    signed: bool = False  # step on the sign of the gradient (IG)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (inversefed's TV)."""
    return ((images[..., :, 1:] - images[..., :, :-1]).abs().mean()
            + (images[..., 1:, :] - images[..., :-1, :]).abs().mean())


def gradient_distance(ours: list[torch.Tensor], target: list[torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "l2":
        return sum(((a - b) ** 2).sum() for a, b in zip(ours, target))
    dot = sum((a * b).sum() for a, b in zip(ours, target))
    norms = sum((a * a).sum() for a in ours).sqrt() * sum((b * b).sum() for b in target).sqrt()
    return 1.0 - dot / norms.clamp_min(1e-30)


def invert(update: ClientUpdate, recipe: Recipe, dataset: str, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(images (B, 3, 32, 32) in the normalised input space, labels) whose gradient matches the update."""
    generator = torch.Generator().manual_seed(seed)
    count, classes = update.samples, int(update.local["classes"])
    images = torch.randn(count, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator).requires_grad_(True)
    soft = torch.randn(count, classes, generator=generator).requires_grad_(True)
    labels = None if recipe.joint_labels else torch.as_tensor(infer_labels(update, seed))
    variables = [images, soft] if recipe.joint_labels else [images]
    low, high = box(dataset)
    model, target = update.model, update.gradient
    parameters = list(model.parameters())

    def objective() -> torch.Tensor:
        logits = model(images)
        if recipe.joint_labels:
            loss = -(torch.softmax(soft, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        else:
            loss = F.cross_entropy(logits, labels)
        ours = torch.autograd.grad(loss, parameters, create_graph=True)
        value = gradient_distance(list(ours), target, recipe.distance)
        if recipe.tv:
            value = value + recipe.tv * total_variation(images)
        return value

    def closure() -> torch.Tensor:
        for variable in variables:
            variable.grad = None
        value = objective()
        grads = torch.autograd.grad(value, variables)
        for variable, grad in zip(variables, grads):
            variable.grad = grad.sign() if recipe.signed else grad
        return value.detach()

    if recipe.optimizer == "lbfgs":
        # strong-Wolfe line searches take more than one evaluation per iteration: torch's default cap of
        # 1.25 evaluations per iteration would end the run early
        optimizer = torch.optim.LBFGS(variables, lr=recipe.lr, max_iter=recipe.steps, max_eval=recipe.steps * 2,
                                      history_size=100, tolerance_grad=1e-12, tolerance_change=1e-14,
                                      line_search_fn="strong_wolfe")
        optimizer.step(closure)
    else:
        optimizer = torch.optim.Adam(variables, lr=recipe.lr)
        milestones = [int(recipe.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        for _ in range(recipe.steps):
            optimizer.zero_grad()
            closure()
            optimizer.step()
            schedule.step()
            if recipe.boxed:
                with torch.no_grad():
                    images.copy_(torch.maximum(torch.minimum(images, high), low))
    final = images.detach()
    if recipe.boxed:
        final = torch.maximum(torch.minimum(final, high), low)
    found = soft.detach().argmax(dim=1).numpy() if recipe.joint_labels else labels.numpy()
    return final, found
