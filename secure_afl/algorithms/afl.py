"""AFL (spec §2): one aggregation round of (G, H, n, counts), then ridge solved once at the server.

γ is added once, at the server, which makes the result exactly centralized ridge on the pooled
data whatever the partition. The original paper's per-client γ and pairwise "absolute
aggregation" merge equal ridge with Kγ, and its "regularisation restore" step equals plain
least squares: ``restore=True`` gives that result directly, refusing when ΣG is singular.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secure_afl.algorithms.base import AlgorithmClient, AlgorithmServer, LinearModel, RoundSpec
from secure_afl.errors import ConfigError
from secure_afl.linalg import solve_spd
from secure_afl.statistics import Statistics, StatisticsLayout, packed_statistics

STATISTICS_ROUND = "afl/statistics"


@dataclass(frozen=True)
class AFLConfig:
    gamma: float = 0.1
    restore: bool = False

    def __post_init__(self) -> None:
        if not (self.gamma >= 0 and np.isfinite(self.gamma)):
            raise ConfigError(f"gamma must be a finite number ≥ 0, got {self.gamma}")
        if self.gamma == 0 and not self.restore:
            raise ConfigError("gamma = 0 is plain least squares: say so with restore=True (--restore)")


def ridge_solve(stats: Statistics, config: AFLConfig) -> np.ndarray:
    """W = (G + γI)⁻¹ H by Cholesky, or W = G⁻¹ H when ``restore`` asks for plain least squares."""
    if config.restore:
        return solve_spd(stats.gram, stats.cross, what="ΣG (plain least squares, restore=True)")
    regularised = stats.gram + config.gamma * np.eye(stats.dim)
    return solve_spd(regularised, stats.cross, what="ΣG + γI")


def statistics_bound(max_samples: int, max_norm: float) -> float:
    """Public bound on every packed entry for a client of ≤ ``max_samples`` rows of norm ≤ ``max_norm``:
    |G_ij| ≤ n R², |H_ij| ≤ n R, n and counts ≤ n. The 1e-3 slack absorbs float32 rounding of norms."""
    return float(max_samples) * max(max_norm**2, max_norm, 1.0) * (1.0 + 1e-3)


class AFLClient(AlgorithmClient):
    def __init__(self, features: torch.Tensor | np.ndarray, labels: np.ndarray, num_classes: int):
        self._vector = packed_statistics(features, labels, num_classes)

    def contribute(self, spec: RoundSpec) -> np.ndarray:
        if spec.name != STATISTICS_ROUND or spec.length != len(self._vector):
            raise ConfigError(f"an AFL client cannot answer round {spec.name!r} of length {spec.length}")
        return self._vector


class AFLServer(AlgorithmServer):
    def __init__(self, dim: int, num_classes: int, config: AFLConfig, bound: float):
        self.layout = StatisticsLayout(dim, num_classes)
        self.config = config
        self.bound = bound
        self.total: Statistics | None = None
        self._weights: np.ndarray | None = None

    def next_round(self) -> RoundSpec | None:
        if self.total is not None:
            return None
        return RoundSpec(STATISTICS_ROUND, self.layout.length, self.bound, layout=self.layout.describe("x"))

    def receive(self, spec: RoundSpec, total: np.ndarray) -> None:
        self.total = self.layout.unpack(total)
        self._weights = ridge_solve(self.total, self.config)

    def model(self) -> LinearModel:
        if self._weights is None:
            raise ConfigError("the AFL server has not received its statistics round yet")
        return LinearModel(self._weights)
