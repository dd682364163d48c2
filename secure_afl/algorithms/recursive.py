"""Recursive ridge for clients (or data batches) that arrive one at a time (spec §2).

Keeps P = (G + γI)⁻¹ and W, and folds in each batch with the Woodbury identity, so the model is
available after every arrival and equals the batch solution (G_total + γI)⁻¹ H_total. Batches
are processed in chunks of at most ``dim`` rows so the inner system (I + X P Xᵀ) never exceeds
d × d; it is symmetric positive definite and solved by Cholesky.
"""

from __future__ import annotations

import numpy as np

from secure_afl.errors import ConfigError
from secure_afl.linalg import solve_spd
from secure_afl.statistics import validate_features


class RecursiveRidge:
    def __init__(self, dim: int, num_classes: int, gamma: float):
        if not gamma > 0:
            raise ConfigError(f"recursive ridge starts from P = (γI)⁻¹ and needs gamma > 0, got {gamma}")
        self.num_classes = num_classes
        self.inverse = np.eye(dim) / gamma
        self.weights = np.zeros((dim, num_classes))

    def update(self, features: np.ndarray, labels: np.ndarray) -> None:
        validate_features(features, labels, self.num_classes)
        x_all = np.asarray(features, dtype=np.float64)
        y_all = np.eye(self.num_classes)[np.asarray(labels)]
        step = self.inverse.shape[0]
        for start in range(0, len(x_all), step):
            x, y = x_all[start : start + step], y_all[start : start + step]
            xp = x @ self.inverse  # (m, d)
            inner = np.eye(len(x)) + xp @ x.T
            gain = solve_spd(inner, xp, what="the Woodbury update").T  # P Xᵀ (I + X P Xᵀ)⁻¹
            self.weights += gain @ (y - x @ self.weights)
            self.inverse -= gain @ xp
            self.inverse = 0.5 * (self.inverse + self.inverse.T)
