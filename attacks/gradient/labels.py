"""Labels from the last layer's gradient, before any image is optimised.

With the mean cross-entropy over a batch of B samples, the gradient of the last linear layer's bias
is (1/B) Σ_i (p_i − y_i), p_i the softmax and y_i the one-hot label. For one sample every entry
but the true class's is positive (p_c > 0) and the true class's is negative (p_y − 1 < 0): the label
is the arg-min, exactly (iDLG, Zhao et al. 2020). For a batch, Σ_i y_i = Σ_i p_i − B·g, so the class
counts follow once the mean prediction Σ_i p_i / B is estimated; the attacker estimates it from the
broadcast model's predictions on random images (near uniform for an untrained model; LLG, Wainakh et
al. 2022, "simple" variant) and rounds the counts to B by largest remainders.
"""

from __future__ import annotations

import numpy as np
import torch

from attacks.gradient.updates import ClientUpdate, last_linear

PROBES = 64  # random images whose mean prediction estimates Σ_i p_i / B


def infer_labels(update: ClientUpdate, seed: int = 0) -> np.ndarray:
    """B labels (sorted): exact for one sample, class counts estimated for a batch."""
    bias = update.gradient[last_linear(update.model)].double().numpy()
    if update.samples == 1:
        return np.array([int(np.argmin(bias))])
    generator = torch.Generator().manual_seed(seed)
    dim = int(update.local["dim"])
    with torch.no_grad():
        probes = torch.randn(PROBES, dim, generator=generator)
        mean_prediction = torch.softmax(update.model(probes), dim=1).mean(dim=0).double().numpy()
    counts = np.clip(update.samples * (mean_prediction - bias), 0.0, None)
    return _round_to_total(counts, update.samples)


def _round_to_total(counts: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` (largest remainders), expanded to one label per sample."""
    if counts.sum() <= 0:
        counts = np.ones_like(counts)
    scaled = counts * total / counts.sum()
    whole = np.floor(scaled).astype(np.int64)
    order = np.argsort(-(scaled - whole), kind="stable")
    whole[order[: total - int(whole.sum())]] += 1
    return np.repeat(np.arange(len(counts)), whole)
