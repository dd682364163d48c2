"""APFL (spec §4): AFL's primary stream, summed once through the protocol, plus a refinement
stream that each client solves on its own data and never sends.

The primary stream is exactly AFL on the primary features (the same server, the same round), so
it equals centralized ridge. Client k then fits the residual of the primary stream on its own
refinement features, W_r,k = (X_rᵀX_r + λI)⁻¹ X_rᵀ(Y − X_p W_p), and predicts with
x_p W_p + β x_r W_r,k. Its model therefore depends only on the pooled data (through W_p) and its
own data: how the other clients' data are split among them changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secure_afl.algorithms import afl
from secure_afl.algorithms.afl import AFLClient, AFLConfig
from secure_afl.algorithms.base import Algorithm, LinearModel
from secure_afl.errors import ConfigError
from secure_afl.features.buffer import RandomBuffer
from secure_afl.features.feature_map import FeatureMap
from secure_afl.linalg import solve_spd
from secure_afl.privacy import StatisticsPrivacy


@dataclass(frozen=True)
class APFLConfig:
    lam: float = 0.1  # λ: ridge of the refinement stream
    beta: float = 0.7  # β: weight of the refinement stream in the personalized prediction
    primary: AFLConfig = AFLConfig()  # the primary stream's solve (γ, restore, DP): AFL's

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lam) and self.lam > 0):
            raise ConfigError(f"lam (the refinement ridge λ) must be a positive finite number, got {self.lam}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"beta must lie in [0, 1], got {self.beta}")


@dataclass(frozen=True)
class PersonalizedModel:
    """Scores = x_p W_p + β x_r W_r,k."""

    primary: np.ndarray  # (d_p, C), shared
    refinement: np.ndarray  # (d_r, C), this client's own
    beta: float

    def predict(self, primary_x: np.ndarray, refine_x: np.ndarray) -> np.ndarray:
        scores = np.asarray(primary_x, dtype=np.float64) @ self.primary
        if self.beta:
            scores = scores + self.beta * (np.asarray(refine_x, dtype=np.float64) @ self.refinement)
        return np.argmax(scores, axis=1)

    def accuracy(self, primary_x: np.ndarray, refine_x: np.ndarray, labels: np.ndarray) -> float:
        if len(labels) == 0:
            return float("nan")
        return float(np.mean(self.predict(primary_x, refine_x) == np.asarray(labels)))


class APFLClient(AFLClient):
    """Contributes its primary-stream statistics like an AFL client; keeps its refinement features."""

    def __init__(self, primary_x: torch.Tensor | np.ndarray, refine_x: torch.Tensor | np.ndarray,
                 labels: np.ndarray, num_classes: int, privacy: StatisticsPrivacy | None = None,
                 bound: float | None = None):
        super().__init__(primary_x, labels, num_classes, privacy, bound)
        self._primary_x = torch.as_tensor(primary_x)
        self._refine_x = torch.as_tensor(refine_x)
        self._labels = np.asarray(labels)
        self._num_classes = num_classes

    def personalize(self, primary_weights: np.ndarray, config: APFLConfig) -> PersonalizedModel:
        """The refinement stream on this client's data, in float64 on its features' device.

        A client usually has fewer samples n_k than refinement features d_r; then the identical
        W_r = X_rᵀ(X_r X_rᵀ + λI)⁻¹ R solves an n_k × n_k system instead of a d_r × d_r one.
        """
        device = self._refine_x.device
        xp = self._primary_x.to(torch.float64)
        xr = self._refine_x.to(torch.float64)
        targets = torch.nn.functional.one_hot(torch.as_tensor(self._labels, device=device), self._num_classes)
        residual = (targets.to(torch.float64) - xp @ torch.as_tensor(primary_weights, device=device)).cpu().numpy()
        rows, width = xr.shape
        what = "the refinement stream's system (λ > 0 keeps it positive definite)"
        if rows < width:
            kernel = (xr @ xr.T).cpu().numpy() + config.lam * np.eye(rows)
            refinement = xr.cpu().numpy().T @ solve_spd(kernel, residual, what=what)
        else:
            gram = (xr.T @ xr).cpu().numpy() + config.lam * np.eye(width)
            refinement = solve_spd(gram, xr.cpu().numpy().T @ residual, what=what)
        return PersonalizedModel(np.asarray(primary_weights), refinement, config.beta)


def configure(config) -> APFLConfig:
    return APFLConfig(config.lam, config.beta, afl.configure(config))


def refinement_map(config) -> FeatureMap:
    """The refinement stream's public map (its own seed and activation), applied beside the primary one."""
    buffer = RandomBuffer(config.refine_width, config.refine_activation, config.refine_seed)
    return FeatureMap(buffer, config.feature_norm, config.max_norm)


def build(job: APFLConfig, data, max_samples: int, max_norm: float):
    """AFL's server (the primary stream is AFL); the clients also hold their refinement features."""
    server, bound = afl.build_server(job.primary, data, max_samples, max_norm)
    clients = {k: APFLClient(data.train_x[idx], data.refine_train_x[idx], data.train_y[idx], data.num_classes,
                             job.primary.privacy, bound)
               for k, idx in enumerate(data.client_indices) if len(idx)}
    return server, clients


def personalize_client(job: APFLConfig, client: APFLClient, model: LinearModel) -> PersonalizedModel:
    """One client's personalized model from the global (primary) model alone: a deployed site runs exactly this."""
    return client.personalize(model.weights, job)


def personalize(job: APFLConfig, server, clients: dict) -> dict[int, PersonalizedModel]:
    model = server.model()
    return {k: personalize_client(job, client, model) for k, client in clients.items()}


ALGORITHM = Algorithm(
    "apfl", configure, build,
    options=("refine_width", "refine_activation", "refine_seed", "lam", "beta", *afl.STATISTICS_DP_OPTIONS,
             "min_class_count"),
    validate=afl.validate_statistics_dp, local_map=refinement_map,
    reference=lambda job, x, y, classes, max_norm: afl.reference(job.primary, x, y, classes, max_norm),
    personalize=personalize, personalize_client=personalize_client, report=lambda job, server, clients, features: afl.report(job.primary, server, clients,
                                                                                       features),
    model_type=LinearModel,  # the global model (the primary stream); personalized ones stay with their clients
)
