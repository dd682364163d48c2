"""Inverting the public random buffer: recovered rows of X = norm(σ(fP + b)) back to backbone features f.

The buffer's P and b come from a public seed, so an attacker rebuilds them. A row x of X is
σ(fP + b) rescaled by an unknown factor (the row norm bound rescales every row under ``l2`` and
large rows under ``clip``), so σ(fP + b) = c·x for some c > 0. Then:

- tanh and sigmoid are invertible pointwise: for the right c, σ⁻¹(c·x) − b lies in the row space of
  P (a d_b-dimensional subspace of R^w, w > d_b), and for any other c it does not. A one-dimensional
  search over c for the smallest relative least-squares residual finds it, and f follows by least
  squares — exactly, up to the float32 rounding of the features.
- ReLU keeps the active coordinates linear: f P_A + b_A = c·x_A on A = {x_j > 0}, least squares in
  (f, c) with a bias, or f up to a positive factor without one (ReLU is positively homogeneous, so
  no statistic can tell the scale; cosine is scale-free). It needs |A| ≥ d_b: a buffer about twice
  as wide as the backbone. Identity works the same way on every coordinate.
- GELU and hardswish are not injective, so the attack declines them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import minimize_scalar

from attacks.base import Attack, NotApplicable, Reconstruction, ServerView, register
from attacks.statistics.closed_form import HONEST_BUT_CURIOUS, singletons
from secure_afl.features.buffer import RandomBuffer

INVERTIBLE = ("tanh", "sigmoid", "relu", "identity")
EXACT_RESIDUAL = 1e-5  # relative least-squares residual of an exact inversion (float32 features)


class BufferInverter:
    """Least squares against the public P, factored once: Pᵀ = QR."""

    def __init__(self, projection: np.ndarray, offset: np.ndarray | None, activation: str):
        self.projection = projection  # (d_b, w)
        self.offset = np.zeros(projection.shape[1]) if offset is None else offset
        self.has_offset = offset is not None
        self.activation = activation
        self._q, self._r = np.linalg.qr(projection.T)

    def _residual(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Qᵀ target, relative residual of the best fP ≈ target) for one target or a column of targets:
        no solve is needed to compare candidates."""
        coefficients = self._q.T @ target
        residual = np.linalg.norm(target - self._q @ coefficients, axis=0) / np.maximum(np.linalg.norm(target, axis=0),
                                                                                       1e-300)
        return coefficients, residual

    def _fit(self, target: np.ndarray) -> tuple[np.ndarray, float]:
        """f minimising ‖fP − target‖ and the relative residual."""
        coefficients, residual = self._residual(target)
        return solve_triangular(self._r, coefficients), float(residual)

    def invert(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(f, relative residual) for one row of X."""
        if self.activation in ("tanh", "sigmoid"):
            return self._invert_pointwise(x)
        active = x > 0 if self.activation == "relu" else np.ones_like(x, dtype=bool)
        if active.sum() < self.projection.shape[0] + self.has_offset:
            raise NotApplicable(f"only {int(active.sum())} active buffer coordinates for {self.projection.shape[0]} "
                                "backbone features: the buffer is too narrow to invert")
        p = self.projection[:, active]
        if self.has_offset:  # [Pᵀ, −x] [f; c] = −b on the active coordinates
            system = np.hstack([p.T, -x[active, None]])
            solution, *_ = np.linalg.lstsq(system, -self.offset[active], rcond=None)
            residual = np.linalg.norm(system @ solution + self.offset[active]) / np.linalg.norm(self.offset[active])
            return solution[:-1], float(residual)
        solution, *_ = np.linalg.lstsq(p.T, x[active], rcond=None)
        return solution, float(np.linalg.norm(p.T @ solution - x[active]) / np.linalg.norm(x[active]))

    def _invert_pointwise(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Search the largest output t = c·max|x| ∈ (0, 1) on a grid in s = −log(1 − t), which spreads
        the points where saturated activations put them (t near 1), then refine by Brent's method."""
        if self.activation == "tanh":
            inverse, peak = np.arctanh, float(np.max(np.abs(x)))
        else:
            if np.any(x <= 0):
                raise NotApplicable("a sigmoid buffer's outputs are positive, but this row is not")
            inverse, peak = (lambda u: np.log(u) - np.log1p(-u)), float(np.max(x))

        def target(s):
            """σ⁻¹(c·x) − b for one s, or one column per s of an array."""
            scale = -np.expm1(-np.atleast_1d(s)) / peak
            values = inverse(x[:, None] * scale[None, :]) - self.offset[:, None]
            return values if np.ndim(s) else values[:, 0]

        def residual(s: float) -> float:
            return float(self._residual(target(s))[1])

        grid = np.geomspace(1e-4, 30.0, 400)
        best = int(np.argmin(self._residual(target(grid))[1]))
        low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        found = minimize_scalar(residual, bounds=(low, high), method="bounded", options={"xatol": 1e-13})
        return self._fit(target(found.x))


@register
class BufferAttack(Attack):
    name = "buffer"
    threat_model = HONEST_BUT_CURIOUS + "; inverts the public random buffer rebuilt from its public seed"
    metric = "cosine"
    threshold = 0.9999
    targets = "singletons"

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        config = view.config
        if not config.get("buffer_width"):
            raise NotApplicable("the run has no random buffer (--buffer-width 0): the recovered features already are "
                                "the backbone's, up to the public norm bound")
        if config["buffer_activation"] not in INVERTIBLE:
            raise NotApplicable(f"a {config['buffer_activation']} buffer is not injective; the attack inverts "
                                f"{', '.join(INVERTIBLE)}")
        buffer = RandomBuffer(config["buffer_width"], config["buffer_activation"], config["buffer_seed"],
                              config["buffer_bias"])
        projection, offset = buffer.parameters(int(view.public["backbone_dim"]))
        inverter = BufferInverter(projection.double().numpy(), None if offset is None else offset.double().numpy(),
                                  buffer.activation)
        for item in singletons(view, rounds):
            if item.space != "x":
                continue
            features, residual = inverter.invert(item.value)
            yield Reconstruction("feature", item.round, item.client, "backbone", features, item.label,
                                 item.certified and residual <= EXACT_RESIDUAL)
