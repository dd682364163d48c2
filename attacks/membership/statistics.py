"""Membership tests on released statistics (G, H, n, counts) of one set of rows: one client's, or a sum.

Each test maps candidate records (z, y) to scores, higher meaning "z is one of the rows". They need
nothing but the release and public reference rows of the same distribution (for μ_ref, Σ_ref):

- ``range``: when fewer rows than dimensions stand behind G, they span G's range, so a member lies
  in it exactly; score = −‖z − P z‖ / ‖z‖ with P the projection onto range(G). A non-member is off
  the range by a margin set by the data, a member by float64 rounding.
- ``leverage``: −zᵀ(G + γI)⁻¹z, with the job's public γ. For Gaussian rows the likelihood-ratio
  test of "z is in the sample" given its second moment is a function of this Mahalanobis norm, and
  it works with more rows than dimensions too: a row in G is explained by it, so its leverage is
  h/(1 + h) where a fresh row's would be h. Its γ → 0 limit is the range test.
- ``tracing-mean``: Dwork, Smith, Steinke, Ullman, Vadhan 2015: ⟨z − μ_ref, μ̂_y − μ_ref⟩ on the
  released class mean μ̂_y = H[:, y] / n_y; it keeps working on noisy means.
- ``tracing-gram``: the same inner product on second moments, zᵀ(G / n − Σ_ref)z.
- ``gaussian-lr``: Sankararaman et al. 2009's likelihood ratio for the class mean under a Gaussian
  model with the reference's per-dimension variance σ²: out, μ̂ ~ N(μ_ref, σ²/n); in,
  μ̂ ~ N(z/n + (n − 1)μ_ref/n, (n − 1)σ²/n²).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from attacks.statistics.closed_form import range_basis
from secure_afl.statistics import Statistics

VARIANCE_FLOOR = 1e-6  # relative to the mean variance: dimensions the reference never varies along


class Unanswerable(Exception):
    """This test cannot score candidates against this release; the message says why."""


@dataclass(frozen=True)
class Reference:
    """Public rows of the candidates' distribution, disjoint from them, with what the tests read off them."""

    x: np.ndarray
    labels: np.ndarray
    num_classes: int

    @cached_property
    def class_means(self) -> np.ndarray:
        return np.stack([self.x[self.labels == c].mean(axis=0) if np.any(self.labels == c) else self.x.mean(axis=0)
                         for c in range(self.num_classes)])

    @cached_property
    def class_variances(self) -> np.ndarray:
        variances = np.stack([self.x[self.labels == c].var(axis=0) if np.sum(self.labels == c) > 1
                              else self.x.var(axis=0) for c in range(self.num_classes)])
        return np.maximum(variances, VARIANCE_FLOOR * float(variances.mean()))

    def quadratic(self, z: np.ndarray) -> np.ndarray:
        """zᵀ Σ_ref z per row, Σ_ref = RᵀR / |R| the reference's second moment (through R: fewer rows than d)."""
        return np.sum((z @ self.x.T) ** 2, axis=1) / len(self.x)


class Release:
    """One release's statistics, with G's eigendecomposition and the candidates' coordinates in its range,
    which the range, leverage and Gram tracing tests share (the last candidates' are kept)."""

    def __init__(self, stats: Statistics, class_counts: np.ndarray):
        self.stats, self.class_counts = stats, class_counts
        self._candidates: tuple[np.ndarray, np.ndarray] | None = None

    @cached_property
    def basis(self) -> tuple[np.ndarray, np.ndarray]:
        return range_basis(self.stats.gram)

    def coordinates(self, z: np.ndarray) -> np.ndarray:
        """zV: the candidates' coordinates on G's range basis."""
        if self._candidates is None or self._candidates[0] is not z:
            self._candidates = (z, z @ self.basis[1])
        return self._candidates[1]

    def class_means(self, labels: np.ndarray) -> np.ndarray:
        counts = self.class_counts[labels]
        if np.any(counts <= 0):
            raise Unanswerable("a candidate's class has no rows in this release")
        return (self.stats.cross[:, labels] / counts).T


def range_score(release: Release, z: np.ndarray, labels: np.ndarray, reference: Reference, gamma: float) -> np.ndarray:
    _, vectors = release.basis
    if vectors.shape[1] == release.stats.dim:
        raise Unanswerable(f"G has full rank {release.stats.dim}: every record lies in its range")
    residual = z - release.coordinates(z) @ vectors.T
    return -np.linalg.norm(residual, axis=1) / np.maximum(np.linalg.norm(z, axis=1), 1e-300)


def leverage_score(release: Release, z: np.ndarray, labels: np.ndarray, reference: Reference,
                   gamma: float) -> np.ndarray:
    if not gamma > 0:
        raise Unanswerable("the job's γ is 0: (G + γI)⁻¹ is not defined")
    values, _ = release.basis
    inside = release.coordinates(z)
    outside = np.maximum(np.einsum("ij,ij->i", z, z) - np.einsum("ij,ij->i", inside, inside), 0.0)
    return -(inside**2 @ (1.0 / (np.maximum(values, 0.0) + gamma)) + outside / gamma)


def tracing_mean_score(release: Release, z: np.ndarray, labels: np.ndarray, reference: Reference,
                       gamma: float) -> np.ndarray:
    public = reference.class_means[labels]
    return np.einsum("ij,ij->i", z - public, release.class_means(labels) - public)


def tracing_gram_score(release: Release, z: np.ndarray, labels: np.ndarray, reference: Reference,
                       gamma: float) -> np.ndarray:
    if release.stats.count <= 0:
        raise Unanswerable("the release does not say how many rows G holds")
    values, _ = release.basis  # zᵀGz through G's eigenpairs: G = V diag(λ) Vᵀ up to float64's rank tolerance
    return release.coordinates(z) ** 2 @ values / release.stats.count - reference.quadratic(z)


def gaussian_lr_score(release: Release, z: np.ndarray, labels: np.ndarray, reference: Reference,
                      gamma: float) -> np.ndarray:
    n = release.class_counts[labels].astype(np.float64)[:, None]
    released = release.class_means(labels)
    mean, variance = reference.class_means[labels], reference.class_variances[labels]
    out_variance = variance / n
    in_variance = np.maximum((n - 1) * variance / n**2, VARIANCE_FLOOR * out_variance)  # n = 1: the mean is z
    log_in = -((released - z / n - (n - 1) * mean / n) ** 2) / (2 * in_variance) - np.log(in_variance) / 2
    log_out = -((released - mean) ** 2) / (2 * out_variance) - np.log(out_variance) / 2
    return np.sum(log_in - log_out, axis=1)


STATISTICS_TESTS: dict[str, Callable] = {
    "range": range_score,
    "leverage": leverage_score,
    "tracing-mean": tracing_mean_score,
    "tracing-gram": tracing_gram_score,
    "gaussian-lr": gaussian_lr_score,
}
