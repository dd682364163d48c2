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

from secure_afl.algorithms.base import Algorithm, AlgorithmClient, AlgorithmServer, LinearModel, RoundSpec
from secure_afl.errors import ConfigError
from secure_afl.linalg import solve_spd
from secure_afl.privacy import StatisticsPrivacy, clip_rows, noisy_ridge_solve
from secure_afl.statistics import Statistics, StatisticsLayout, compute_statistics, packed_statistics

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
        self._vector, self.entries_clipped = privacy.privatize(packed_statistics(x, labels, num_classes), layout, bound,
                                                               STATISTICS_ROUND)

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

    def privacy_report(self, clients: dict[int, AFLClient] | None, rows_clipped: int) -> dict:
        """The results' ``dp`` block (``rows_clipped``: rows the feature map's norm bound changed), with the rows
        each client re-clipped in float64 and every noisy entry clipped to the public bound (None when ``clients``
        is None: a deployed job's sites keep those counts)."""
        privacy = self.config.privacy
        report = privacy.report(rows_clipped, self.layout.length, _total(clients, "entries_clipped"))
        report["rows_reclipped_float64"] = _total(clients, "rows_clipped")
        return report

    def model(self) -> LinearModel:
        if self._weights is None:
            raise ConfigError("the AFL server has not received its statistics round yet")
        return LinearModel(self._weights)


def _total(clients: dict | None, count: str) -> int | None:
    """A count summed over the clients, or None when they are not in this process (a deployed job's sites)."""
    return None if clients is None else sum(getattr(c, count) for c in clients.values())


# Options of DP on the statistics (AFL and APFL) and of the minimum-count defence (every analytic algorithm).
STATISTICS_DP_OPTIONS = ("dp_noise", "dp_epsilon", "dp_delta", "dp_placement", "dp_solve")


def statistics_privacy(config, releases: int = 1) -> StatisticsPrivacy | None:
    """DP on the statistics when --dp-epsilon or --dp-noise asks for it (C is --max-norm; DeepAFL's layers clip
    to their own norms; the distributed placement's t is the protocol's minimum aggregation size; each of the
    ``releases`` aggregation rounds is one release). Refuses a fixed-point precision too coarse to carry the
    noise: a share's σ must span at least 1000 encoding steps."""
    if config.dp_epsilon is None and config.dp_noise is None:
        return None
    placement = config.dp_placement or "local"
    t = config.protocol_options()["min_clients"] if placement == "distributed" else 1
    privacy = StatisticsPrivacy(config.dp_epsilon, config.dp_delta, config.max_norm, placement, t,
                                config.clients_per_round(), releases, config.dp_solve, config.dp_noise)
    share = privacy.share_sigma  # calibrates z now: an ε no accountant can certify is refused before any work
    if config.fraction_bits is not None and share * 2.0**config.fraction_bits < 1000:
        raise ConfigError(f"--fraction-bits {config.fraction_bits} cannot resolve the DP noise (share σ {share:.3g}): "
                          "raise it or leave the default")
    return privacy


def validate_statistics_dp(config, mechanism_options: tuple[str, ...] = ("dp_placement", "dp_solve")) -> None:
    """The DP refusals that need more than the option scope: what C is, what a placement needs, and that the
    mechanism's own options (``mechanism_options``) come with DP."""
    private = config.dp_epsilon is not None or config.dp_noise is not None
    changed = [name for name in mechanism_options if getattr(config, name) != getattr(type(config), name)]
    if not private and changed:
        raise ConfigError(f"{', '.join('--' + name.replace('_', '-') for name in changed)} need --dp-epsilon "
                          "(or --dp-noise)")
    if config.dp_clip != type(config).dp_clip:
        raise ConfigError("--dp-clip is DP-SGD's gradient bound; the statistics' clip norm C is --max-norm")
    if config.dp_placement == "distributed" and "min_clients" not in config.protocol_options():
        raise ConfigError(f"--dp-placement distributed needs a secure protocol (mask, he-*): under {config.protocol} "
                          "the server reads each client's share of the noise; use --dp-placement local")


def configure(config) -> AFLConfig:
    return AFLConfig(config.gamma, config.restore, statistics_privacy(config))


def build_server(job: AFLConfig, data, max_samples: int, max_norm: float) -> tuple[AFLServer, float]:
    """AFL's server and the bound each client clips its (noisy) vector to; the public bound follows from the
    feature norm bound and the largest client size."""
    server = AFLServer(data.train_x.shape[1], data.num_classes, job, statistics_bound(max_samples, max_norm))
    return server, server.next_round().bound


def build(job: AFLConfig, data, max_samples: int, max_norm: float):
    """A client that withholds every row (the minimum-count rule) has nothing to send and is not built."""
    server, bound = build_server(job, data, max_samples, max_norm)
    clients = {k: AFLClient(data.train_x[idx], data.train_y[idx], data.num_classes, job.privacy, bound)
               for k, idx in enumerate(data.client_indices) if len(idx)}
    return server, clients


def reference(job: AFLConfig, x, y: np.ndarray, num_classes: int, max_norm: float) -> LinearModel:
    return LinearModel(ridge_solve(compute_statistics(x, y, num_classes), job))


def privacy_block(server, clients: dict | None, features) -> dict:
    """The results' ``dp`` block of an analytic algorithm under DP: the guarantee, and every row and entry the
    mechanism clipped (the server's ``privacy_report``; ``clients`` None: a deployed job, whose sites keep their
    own clipping counts)."""
    rows = round(features.rows_changed * len(features.data.train_y))  # rows the feature map's norm bound changed
    return {"dp": server.privacy_report(clients, rows)}


def report(job: AFLConfig, server: AFLServer, clients: dict, features) -> dict:
    return {} if job.privacy is None else privacy_block(server, clients, features)


ALGORITHM = Algorithm("afl", configure, build, options=(*STATISTICS_DP_OPTIONS, "min_class_count"),
                      validate=validate_statistics_dp, reference=reference, report=report, model_type=LinearModel)
