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
from secure_afl.privacy import StatisticsPrivacy, clip_rows, noisy_ridge_solve
from secure_afl.statistics import Statistics, StatisticsLayout, packed_statistics

STATISTICS_ROUND = "afl/statistics"


@dataclass(frozen=True)
class AFLConfig:
    gamma: float = 0.1
    restore: bool = False
    privacy: StatisticsPrivacy | None = None  # DP on the statistics (secure_afl/privacy.py)

    def __post_init__(self) -> None:
        if self.privacy is not None and self.restore:
            raise ConfigError("--restore (plain least squares) cannot solve a noisy Gram: drop it under DP")
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
    """Sends its packed statistics; under DP (``privacy`` with the round's public ``bound``) its rows are
    clipped to C in float64 and the vector is noised once, here, so a repeated round re-sends the same
    release instead of a second one."""

    rows_clipped = 0  # rows whose float64 norm exceeded C (DP only)
    entries_clipped = 0  # noisy entries clipped to the public bound (DP only)

    def __init__(self, features: torch.Tensor | np.ndarray, labels: np.ndarray, num_classes: int,
                 privacy: StatisticsPrivacy | None = None, bound: float | None = None):
        if privacy is None:
            self._vector = packed_statistics(features, labels, num_classes)
            return
        if bound is None:
            raise ConfigError("a client under DP needs the round's public bound to clip its noisy vector to")
        x, self.rows_clipped = clip_rows(torch.as_tensor(features), privacy.clip)
        layout = StatisticsLayout(x.shape[1], num_classes)
        self._vector, self.entries_clipped = privacy.privatize(packed_statistics(x, labels, num_classes), layout, bound)

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
        privacy = self.config.privacy
        if privacy is None:
            return RoundSpec(STATISTICS_ROUND, self.layout.length, self.bound, layout=self.layout.describe("x"))
        layout = self.layout.describe("x", counts=False, label_scale=privacy.clip, noise_sigma=privacy.share_sigma)
        return RoundSpec(STATISTICS_ROUND, self.layout.length, privacy.bound(self.bound), layout=layout)

    def receive(self, spec: RoundSpec, total: np.ndarray) -> None:
        self.total = self.layout.unpack(total)
        privacy = self.config.privacy
        if privacy is None:
            self._weights = ridge_solve(self.total, self.config)
        else:
            self._weights = noisy_ridge_solve(self.total.gram, self.total.cross / privacy.clip, self.config.gamma,
                                              privacy.sum_sigma, privacy.solve)

    def privacy_report(self, clients: dict[int, AFLClient], rows_clipped: int) -> dict:
        """The results' ``dp`` block (``rows_clipped``: rows the feature map's norm bound changed), with the rows
        each client re-clipped in float64 and every noisy entry clipped to the public bound."""
        privacy = self.config.privacy
        report = privacy.report(rows_clipped, self.layout.length, sum(c.entries_clipped for c in clients.values()))
        report["rows_reclipped_float64"] = sum(c.rows_clipped for c in clients.values())
        return report

    def model(self) -> LinearModel:
        if self._weights is None:
            raise ConfigError("the AFL server has not received its statistics round yet")
        return LinearModel(self._weights)
