"""DeepAFL (spec §5): layer-wise analytic residual blocks, 2T+1 aggregation rounds of statistics.

Layer 0 is Φ_0 = σ(s X A), or Φ_0 = s X with ``width`` 0 (then layer 0 is AFL's ridge).
s = √d_b / R puts feature rows of norm ≤ R on unit-RMS coordinates, the scale the random
projections' N(0, 1/d_in) entries assume. Without it (the paper's Φ_0 = σ(XA)) l2-normalised
features give pre-activations of about 1/√d_b ≈ 0.03, every σ is then nearly linear, and depth
adds nothing: on mnist5k the unscaled model reached 0.930 against AFL's 0.929, the scaled one
0.942 from the features themselves (benchmarks/accuracy_table.py). s is public: it follows from
d_b and the bound R.
Round 2t (classifier): clients send the statistics of (Φ_t, Y); the
server solves W_t = (ΣΦᵀΦ + λI)⁻¹ ΣΦᵀY. Round 2t+1 (residual, t < T): clients send
(F_tᵀF_t, F_tᵀR_t) with F_t = σ(Φ_t B_t) and R_t = Y − Φ_t W_t; the server solves the sandwiched
ridge problem Ω_t = argmin Σ‖R_t − F_t Ω W_t‖² + γ‖Ω‖² by two eigendecompositions, and every
client moves to Φ_{t+1} = Φ_t + F_t Ω_t. Ω_t has rank ≤ C (``sandwiched_solve``): it is broadcast, kept and
applied as its two thin factors, so a step costs n·d_F·C + n·C·d_Φ instead of n·d_F·d_Φ. A, B_t come from public seeds; W_t and Ω_t are
broadcast. Every round is a sum, so secure aggregation covers all of them, and every W_t and Ω_t
equals the centralized solution whatever the partition.

Public bounds. The protocols need a bound on every entry of every client's vector before a round
starts, declared by the server from what it legitimately knows, never from one client's data.
Round 0: feature rows have norm ≤ R and |σ(z)| ≤ |z| (relu, gelu, tanh, hardswish, identity;
sigmoid adds ≤ ½ per coordinate), so ‖φ_0‖ ≤ sR‖A‖₂ (sR without A). Later rounds use the sums already received:
a client's Gram matrix is PSD with entries ≤ its largest diagonal entry, and each diagonal entry
is at most the total's. So the residual round's bound follows from ΣΦᵀΦ (diag FᵀF ≤ diag BᵀΦᵀΦB)
and the total residual energy diag RᵀR = counts − 2 diag WᵀΣΦᵀY + diag WᵀΣΦᵀΦW; the next
classifier round's from diag Φ'ᵀΦ' ≤ 2 diag ΦᵀΦ + 2 diag ΩᵀFᵀFΩ. Cross terms follow by
Cauchy–Schwarz. (Spectral-norm products instead lost 4–10 fixed-point bits per layer.)

Under DP (``privacy``, secure_afl/privacy.py) every one of the 2T + 1 releases is a Gaussian mechanism
of the same multiplier z, composed by the accountant. One record's contribution to a release must be
bounded by public numbers, so the network itself clips its rows: Φ_t to norm C_Φ = ``row_rms``·√d_Φ
(after Φ_0 and after every residual step), F_t to C_F = ``row_rms``·√d_F, and the residual targets
Y − Φ_t W_t to C_R = ``residual_clip``, sent divided by C_R so they play the one-hot labels' part
(the release then scales them by its clip, as AFL's labels are). ``row_rms`` = 1 matches the unit-RMS
coordinates s was chosen for, so clipping rarely bites. Prediction applies the same clips, so the
model is one function of an image. Bounds then come from the clip norms, never from noisy sums:
|G| ≤ n C², |H| ≤ n C², plus the noise margin. The counts are not sent. A repeated round re-sends
the same noisy vector (no second release).

A client can check the first round's bound itself (it follows from the public configuration), but
not the later ones: they follow from sums only the server received. A client whose vector exceeded
such a bound and refused would tell a lying server one bit about its data, and fresh rounds would
let the server bisect it (issue 12, finding 4). So in those rounds a client clips its vector to the
declared bound instead of refusing, and counts what it clipped: an honest server's bound holds by
construction, so nothing is ever clipped then, and a lying one gets the sum of clipped vectors of
every client in the round (the bound is in the signed round setup, the same for all of them), never
a refusal that depends on one client's data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from secure_afl.algorithms import afl
from secure_afl.algorithms.base import Algorithm, AlgorithmClient, AlgorithmServer, RoundSpec
from secure_afl.errors import ConfigError
from secure_afl.features.buffer import ACTIVATIONS, RandomBuffer
from secure_afl.linalg import solve_spd
from secure_afl.privacy import StatisticsPrivacy, clip_rows, noisy_ridge_solve, robust_spectrum
from secure_afl.statistics import Statistics, StatisticsLayout, packed_statistics, validate_features

CLASSIFIER, RESIDUAL = "deepafl/classifier", "deepafl/residual"
BOUND_SLACK = 1.0 + 1e-3


@dataclass(frozen=True)
class DeepAFLConfig:
    """Defaults are the paper's reference configuration; the CLI's defaults were chosen on validation."""

    width: int = 1024  # d_Φ; 0: Φ_0 is the scaled features themselves (d_Φ = d_b)
    residual_width: int = 1024  # d_F
    layers: int = 20  # T: residual blocks (2T + 1 rounds)
    lam: float = 1.0  # λ of every classifier solve
    gamma: float = 0.05  # γ of every sandwiched solve
    activation: str = "gelu"
    seed: int = 0  # A uses this seed, B_t uses seed + 1 + t
    privacy: StatisticsPrivacy | None = None  # DP on every release (module docstring)
    row_rms: float = 1.0  # under DP: Φ_t rows clipped to row_rms·√d_Φ, F_t rows to row_rms·√d_F
    residual_clip: float = 1.0  # under DP: residual target rows clipped to this norm

    def __post_init__(self) -> None:
        if self.width < 0 or self.residual_width < 1:
            raise ConfigError("DeepAFL's d_Φ must be ≥ 0 (0: the features themselves) and d_F ≥ 1")
        if self.layers < 0:
            raise ConfigError(f"layers (T) must be ≥ 0, got {self.layers}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        for name in ("lam", "gamma"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number ≥ 0, got {value}")
        for name in ("row_rms", "residual_clip"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ConfigError(f"DeepAFL's DP clip {name} must be a finite number > 0, got {value}")

    def expansion(self) -> RandomBuffer | None:
        return RandomBuffer(self.width, self.activation, self.seed) if self.width else None

    def phi_dim(self, in_dim: int) -> int:
        return self.width or in_dim

    def residual_map(self, layer: int) -> RandomBuffer:
        return RandomBuffer(self.residual_width, self.activation, self.seed + 1 + layer)

    def clips(self, in_dim: int) -> LayerClips | None:
        """The public row clip norms under DP; None without DP (nothing is clipped)."""
        if self.privacy is None:
            return None
        return LayerClips(self.row_rms * math.sqrt(self.phi_dim(in_dim)), self.row_rms * math.sqrt(self.residual_width),
                          self.residual_clip)


@dataclass(frozen=True)
class LayerClips:
    """Row norms every DP release is built from: C_Φ, C_F and C_R (module docstring)."""

    phi: float
    features: float
    residual: float

    def as_dict(self) -> dict:
        return {"phi": self.phi, "residual_features": self.features, "residuals": self.residual}


def _clipped(rows: torch.Tensor, norm: float | None) -> tuple[torch.Tensor, int]:
    return (rows, 0) if norm is None else clip_rows(rows, norm)


def mapped(buffer: RandomBuffer, x: torch.Tensor) -> torch.Tensor:
    """σ(x P) in float64 (the buffer's own apply works in float32, too coarse for exact layers)."""
    projection, _ = buffer.parameters(x.shape[1])
    return ACTIVATIONS[buffer.activation](x @ projection.to(device=x.device, dtype=torch.float64))


def input_scale(in_dim: int, max_norm: float) -> float:
    """s = √d_b / R: rows of norm ≤ R get coordinates of RMS ≤ 1."""
    return math.sqrt(in_dim) / max_norm


def initial_features(config: DeepAFLConfig, x: torch.Tensor, scale: float,
                     clips: LayerClips | None = None) -> tuple[torch.Tensor, int]:
    """(Φ_0 = σ(s x A), or s x when the config has no expansion, float64; rows clipped under DP)."""
    expansion = config.expansion()
    scaled = scale * x.to(torch.float64)
    return _clipped(scaled if expansion is None else mapped(expansion, scaled), clips and clips.phi)


def residual_features(config: DeepAFLConfig, layer: int, phi: torch.Tensor,
                      clips: LayerClips | None = None) -> tuple[torch.Tensor, int]:
    """(F_t = σ(Φ_t B_t), rows clipped under DP)."""
    return _clipped(mapped(config.residual_map(layer), phi), clips and clips.features)


@dataclass(frozen=True)
class LowRank:
    """Ω = left · rightᵀ (d_F × r and d_Φ × r, r ≤ C): a residual block's weights as its thin factors.

    ``right`` None is a full Ω held in ``left`` (a model file of format version 1)."""

    left: np.ndarray
    right: np.ndarray | None = None

    @property
    def matrix(self) -> np.ndarray:
        return self.left if self.right is None else self.left @ self.right.T

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """F Ω, through the factors: (F left) rightᵀ."""
        product = features @ torch.as_tensor(self.left, device=features.device)
        return product if self.right is None else product @ torch.as_tensor(self.right, device=features.device).T

    def broadcast(self) -> dict[str, np.ndarray]:
        return {"omega_left": self.left, "omega_right": self.right}

    @classmethod
    def received(cls, broadcast, features_dim: int, phi_dim: int) -> LowRank:
        """The factors a round broadcast, refused unless they fit d_F and d_Φ with one rank."""
        left, right = (np.asarray(broadcast.get(name), dtype=np.float64) for name in ("omega_left", "omega_right"))
        if left.ndim != 2 or right.ndim != 2 or left.shape[0] != features_dim or right.shape[0] != phi_dim \
                or left.shape[1] != right.shape[1]:
            raise ConfigError(f"the broadcast residual factors have shapes {left.shape} and {right.shape}; this "
                              f"network needs ({features_dim}, r) and ({phi_dim}, r)")
        return cls(left, right)


def next_features(phi: torch.Tensor, features: torch.Tensor, omega: LowRank,
                  clips: LayerClips | None = None) -> tuple[torch.Tensor, int]:
    """(Φ_{t+1} = Φ_t + F_t Ω_t, rows clipped under DP)."""
    return _clipped(phi + omega.apply(features), clips and clips.phi)


def layer_features(config: DeepAFLConfig, scale: float, features, residuals: list[LowRank],
                   clips: LayerClips | None = None):
    """Φ_0, Φ_1 = Φ_0 + F_0 Ω_0, … (float64 tensors) of rows of X, given the broadcast Ω_t."""
    phi, _ = initial_features(config, torch.as_tensor(np.asarray(features), dtype=torch.float64), scale, clips)
    yield phi
    for t, omega in enumerate(residuals):
        phi, _ = next_features(phi, residual_features(config, t, phi, clips)[0], omega, clips)
        yield phi


def activation_bound(norm: float, width: int, activation: str) -> float:
    """A bound on ‖σ(z)‖ given ‖z‖ ≤ norm."""
    return norm + (0.5 * math.sqrt(width) if activation == "sigmoid" else 0.0)


def spectral_norm(matrix: np.ndarray | torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(torch.as_tensor(matrix, dtype=torch.float64), ord=2))


def classifier_solve(stats: Statistics, lam: float) -> np.ndarray:
    """W = (ΣΦᵀΦ + λI)⁻¹ ΣΦᵀY by Cholesky (λ = 0: plain least squares, refused when singular)."""
    return solve_spd(stats.gram + lam * np.eye(stats.dim), stats.cross, what="ΣΦᵀΦ + λI")


def sandwiched_solve(gram: np.ndarray, cross: np.ndarray, weights: np.ndarray, gamma: float,
                     spectrum=None) -> LowRank:
    """Ω = argmin ‖R − F Ω W‖² + γ‖Ω‖² from S = FᵀF and C = FᵀR.

    The normal equations S Ω (WWᵀ) + γΩ = C Wᵀ diagonalise in the eigenbases S = V diag(μ) Vᵀ and
    WWᵀ = U diag(ν) Uᵀ: Ω = V [(Vᵀ C Wᵀ U) ⊘ (γ + μνᵀ)] Uᵀ. Where γ + μν vanishes (γ = 0 and a
    null direction) the numerator vanishes too and the minimum-norm solution puts 0 there.
    ``spectrum`` maps μ before use (a noisy S under DP: ``privacy.robust_spectrum``).

    W is d_Φ × C with C ≪ d_Φ, so WWᵀ has rank ≤ C: its eigenvectors with ν > 0 are the left singular
    vectors of the thin SVD W = U diag(s) Qᵀ (ν = s²), and on their complement Wᵀu = 0 makes the
    numerator vanish, so that part of Ω is exactly 0. The thin SVD (d_Φ × C) replaces a d_Φ × d_Φ
    eigendecomposition; Ω agrees with the full one to round-off (tests/test_deepafl_speed.py). The result is
    returned as its factors V·inner (d_F × r) and U (d_Φ × r): Ω's rank is at most C.
    """
    mu, v = np.linalg.eigh(gram)
    u, singular, _ = np.linalg.svd(weights, full_matrices=False)
    if spectrum is not None:
        mu = spectrum(mu)
    mu, nu = np.clip(mu, 0.0, None), singular**2  # PSD: round-off negatives are zero
    numerator = v.T @ cross @ weights.T @ u
    denominator = gamma + np.outer(mu, nu)
    tiny = np.finfo(np.float64).eps * max(float(denominator.max()), 1.0)
    inner = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > tiny)
    return LowRank(v @ inner, u)


def quadratic_diagonal(a: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """diag(Aᵀ G A) through one matrix product (a three-operand einsum loops in C without BLAS: seconds)."""
    return np.einsum("pi,pi->i", a, gram @ a)


def low_rank_quadratic_diagonal(omega: LowRank, gram: np.ndarray) -> np.ndarray:
    """diag(Ωᵀ G Ω) for Ω = L Rᵀ: diag(R (Lᵀ G L) Rᵀ), an r × r core instead of a d_F × d_Φ product."""
    core = omega.left.T @ gram @ omega.left
    return np.einsum("ir,ir->i", omega.right @ core, omega.right)


@dataclass(frozen=True)
class DeepAFLModel:
    config: DeepAFLConfig
    scale: float  # s of Φ_0
    classifiers: list[np.ndarray]  # W_0 … W_T
    residuals: list[LowRank]  # Ω_0 … Ω_{T−1}
    clips: LayerClips | None = None  # the rows' clip norms under DP (part of the network)

    @property
    def weights(self) -> np.ndarray:
        """W_T, the final classifier (what is broadcast last)."""
        return self.classifiers[-1]

    def layer_scores(self, features):
        """Scores Φ_t W_t after every layer t = 0 … T."""
        for phi, w in zip(layer_features(self.config, self.scale, features, self.residuals, self.clips),
                          self.classifiers):
            yield (phi @ torch.as_tensor(w)).numpy()

    def layer_predictions(self, features) -> list[np.ndarray]:
        """The predicted classes after every layer, in one pass through the layers (the last is ``predict``'s)."""
        return [np.argmax(scores, axis=1) for scores in self.layer_scores(features)]

    def predict(self, features) -> np.ndarray:
        *_, last = self.layer_scores(features)
        return np.argmax(last, axis=1)

    def accuracy(self, features, labels) -> float:
        if len(labels) == 0:
            return float("nan")
        return float(np.mean(self.predict(features) == np.asarray(labels)))

    def layer_accuracy(self, features, labels) -> list[float]:
        return [float(np.mean(predicted == np.asarray(labels))) for predicted in self.layer_predictions(features)]

    def relative_difference(self, other: DeepAFLModel) -> float:
        """The largest relative difference of any W_t or Ω_t."""
        pairs = list(zip(self.classifiers, other.classifiers)) \
            + [(a.matrix, b.matrix) for a, b in zip(self.residuals, other.residuals)]
        return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in pairs)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Every layer: the public config (A and the B_t follow from its seed; the DP mechanism is not needed to
        predict), s, the rows' clip norms under DP, every W_t and Ω_t's factors."""
        arrays = {**{f"classifier_{t}": w for t, w in enumerate(self.classifiers)},
                  **{f"residual_{t}_{side}": getattr(omega, side) for t, omega in enumerate(self.residuals)
                     for side in ("left", "right")}}
        meta = {"config": asdict(replace(self.config, privacy=None)), "scale": self.scale,
                "layers": len(self.residuals), "clips": None if self.clips is None else asdict(self.clips)}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: Mapping[str, np.ndarray]) -> DeepAFLModel:
        layers = int(meta["layers"])
        return cls(DeepAFLConfig(**meta["config"]), float(meta["scale"]),
                   [np.asarray(arrays[f"classifier_{t}"], dtype=np.float64) for t in range(layers + 1)],
                   [_stored_residual(arrays, t) for t in range(layers)],
                   None if meta["clips"] is None else LayerClips(**meta["clips"]))


def _stored_residual(arrays: Mapping[str, np.ndarray], layer: int) -> LowRank:
    """Ω_t from a model file: its factors, or the full matrix that format version 1 stored."""
    if f"residual_{layer}" in arrays:
        return LowRank(np.asarray(arrays[f"residual_{layer}"], dtype=np.float64))
    return LowRank(*(np.asarray(arrays[f"residual_{layer}_{side}"], dtype=np.float64) for side in ("left", "right")))


def _round(kind: str, layer: int) -> str:
    return f"{kind}/{layer}"


def _parse(name: str) -> tuple[str, int]:
    kind, _, layer = name.rpartition("/")
    if kind not in (CLASSIFIER, RESIDUAL) or not layer.isdigit():
        raise ConfigError(f"a DeepAFL client cannot answer round {name!r}")
    return kind, int(layer)


class DeepAFLClient(AlgorithmClient):
    """Keeps Φ_t (float64, on the features' device) and the last F_t; sends only statistics."""

    def __init__(self, features: torch.Tensor | np.ndarray, labels: np.ndarray, num_classes: int, config: DeepAFLConfig,
                 max_norm: float):
        validate_features(features, labels, num_classes)
        x = torch.as_tensor(features)
        self.config = config
        self._clips = config.clips(x.shape[1])
        self._labels = np.asarray(labels)
        self._targets = torch.nn.functional.one_hot(torch.as_tensor(self._labels, device=x.device), num_classes).to(torch.float64)
        self._phi, phi_clipped = initial_features(config, x, input_scale(x.shape[1], max_norm), self._clips)
        self._residual_features: torch.Tensor | None = None
        self._layer = 0
        self._num_classes = num_classes
        self._released: tuple[str, np.ndarray] | None = None  # under DP: the last noisy vector, re-sent if asked again
        self.clipped = 0  # entries clipped to a declared bound (nonzero only if the server lied)
        self.rows_clipped = {"phi": phi_clipped, "residual_features": 0, "residuals": 0}  # DP row clips
        self.entries_clipped = 0  # DP: noisy entries clipped to the public bound

    def contribute(self, spec: RoundSpec) -> np.ndarray:
        if self.config.privacy is not None:
            return self._private(spec)
        vector = self._statistics(spec)
        if spec.name != _round(CLASSIFIER, 0):  # a bound derived from sums the server received: clip, never refuse
            over = np.count_nonzero(np.abs(vector) > spec.bound)
            if over:
                self.clipped += int(over)
                np.clip(vector, -spec.bound, spec.bound, out=vector)
        return vector

    def _private(self, spec: RoundSpec) -> np.ndarray:
        """One noisy release per round: the statistics of clipped rows, noised with the round's clip norm."""
        if self._released is not None and self._released[0] == spec.name:
            return self._released[1]
        kind, _ = _parse(spec.name)
        privacy = self.config.privacy.with_clip(self._clips.phi if kind == CLASSIFIER else self._clips.features)
        dim = len(self._phi[0]) if kind == CLASSIFIER else self.config.residual_width
        vector, clipped = privacy.privatize(self._statistics(spec), StatisticsLayout(dim, self._num_classes), spec.bound,
                                            spec.name)
        self.entries_clipped += clipped
        self._released = (spec.name, vector)
        return vector

    def _statistics(self, spec: RoundSpec) -> np.ndarray:
        kind, layer = _parse(spec.name)
        if kind == CLASSIFIER:
            if layer != self._layer:
                if layer != self._layer + 1 or self._residual_features is None or "omega_left" not in spec.broadcast:
                    raise ConfigError(f"round {spec.name!r} arrived out of order")
                omega = LowRank.received(spec.broadcast, self.config.residual_width, self._phi.shape[1])
                self._phi, clipped = next_features(self._phi, self._residual_features, omega, self._clips)
                self.rows_clipped["phi"] += clipped
                self._residual_features, self._layer = None, layer
            return packed_statistics(self._phi, self._labels, self._num_classes)
        if layer != self._layer:
            raise ConfigError(f"round {spec.name!r} arrived out of order")
        weights = torch.as_tensor(spec.broadcast["weights"], device=self._phi.device)
        f, clipped = residual_features(self.config, layer, self._phi, self._clips)
        self._residual_features = f
        self.rows_clipped["residual_features"] += clipped
        residual = self._targets - self._phi @ weights
        if self._clips is not None:  # sent as unit-norm "labels"; the release scales them by its clip (docstring)
            residual, clipped = clip_rows(residual, self._clips.residual)
            residual = residual / self._clips.residual
            self.rows_clipped["residuals"] += clipped
        # packing reads only G's upper triangle, so the lower one is left unmirrored; no counts in this round
        stats = Statistics((f.T @ f).cpu().numpy(), (f.T @ residual).cpu().numpy(), f.shape[0],
                           np.zeros(self._num_classes, dtype=np.int64))
        return StatisticsLayout(self.config.residual_width, self._num_classes).pack(stats)


class DeepAFLServer(AlgorithmServer):
    def __init__(self, in_dim: int, num_classes: int, config: DeepAFLConfig, max_samples: int, max_norm: float):
        self.config = config
        self.num_classes = num_classes
        self.max_samples = max_samples
        self.classifiers: list[np.ndarray] = []
        self.residuals: list[np.ndarray] = []
        self.phi_dim = config.phi_dim(in_dim)
        self.scale = input_scale(in_dim, max_norm)
        self.clips = config.clips(in_dim)
        if config.privacy is not None:  # one mechanism per kind of release, bounds from the public clip norms
            self._private = {CLASSIFIER: config.privacy.with_clip(self.clips.phi),
                             RESIDUAL: config.privacy.with_clip(self.clips.features)}
            self._bound = self._private_bound(CLASSIFIER)
        else:
            row = self.scale * max_norm
            if (expansion := config.expansion()) is not None:
                projection, _ = expansion.parameters(in_dim)
                row = activation_bound(row * spectral_norm(projection), config.width, config.activation)
            self._bound = self._declare(max_samples * row * row, max_samples * row)
        self._phi_total: Statistics | None = None
        self._next = (CLASSIFIER, 0)

    def _private_bound(self, kind: str) -> float:
        """|G|, |H| ≤ n C² for rows clipped to C (H's targets scaled to norm ≤ C), plus the noise margin."""
        privacy = self._private[kind]
        return privacy.bound(self.max_samples * privacy.clip**2 * BOUND_SLACK)

    def _declare(self, gram: float, cross: float) -> float:
        """One bound for the whole packed vector: Gram entries, cross entries, and counts ≤ n."""
        return max(gram, cross, float(self.max_samples)) * BOUND_SLACK

    def next_round(self) -> RoundSpec | None:
        if self._next is None:
            return None
        kind, layer = self._next
        if kind == CLASSIFIER:
            layout = StatisticsLayout(self.phi_dim, self.num_classes)
            broadcast = self.residuals[-1].broadcast() if layer else {}
            description = layout.describe("phi", layer=layer, scale=self.scale, **self._noise(kind))
        else:
            layout = StatisticsLayout(self.config.residual_width, self.num_classes)
            broadcast = {"weights": self.classifiers[-1]}
            description = layout.describe("residual_features", targets="residuals", layer=layer,
                                          **{"counts": False, **self._noise(kind)})
        return RoundSpec(_round(kind, layer), layout.length, self._bound, broadcast, layout=description)

    def _noise(self, kind: str) -> dict:
        """What a DP round's layout declares: no counts, the targets' scale and the share of noise."""
        if self.config.privacy is None:
            return {}
        privacy = self._private[kind]
        return {"counts": False, "label_scale": privacy.clip, "noise_sigma": privacy.share_sigma}

    def receive(self, spec: RoundSpec, total: np.ndarray) -> None:
        kind, layer = _parse(spec.name)
        private = self._private[kind] if self.config.privacy is not None else None
        if kind == CLASSIFIER:
            stats = StatisticsLayout(self.phi_dim, self.num_classes).unpack(total)
            if private is None:
                weights = classifier_solve(stats, self.config.lam)
            else:
                weights = noisy_ridge_solve(stats.gram, stats.cross / private.clip, self.config.lam,
                                            private.sum_sigma, private.solve)
            self.classifiers.append(weights)
            self._phi_total = stats
            if layer < self.config.layers:
                self._next = (RESIDUAL, layer)
                self._bound = self._residual_round_bound(stats, weights, layer) if private is None \
                    else self._private_bound(RESIDUAL)
            else:
                self._next = None
            return
        stats = StatisticsLayout(self.config.residual_width, self.num_classes).unpack(total)
        self._next = (CLASSIFIER, layer + 1)
        if private is not None:
            robust = lambda mu: robust_spectrum(mu, private.sum_sigma, private.solve)  # noqa: E731
            self.residuals.append(sandwiched_solve(stats.gram, stats.cross * (self.clips.residual / private.clip),
                                                   self.classifiers[-1], self.config.gamma, robust))
            self._bound = self._private_bound(CLASSIFIER)
            return
        omega = sandwiched_solve(stats.gram, stats.cross, self.classifiers[-1], self.config.gamma)
        self.residuals.append(omega)
        self._next = (CLASSIFIER, layer + 1)
        phi_diag = np.diag(self._phi_total.gram) + low_rank_quadratic_diagonal(omega, stats.gram)
        gram = 2.0 * float(phi_diag.max())
        self._bound = self._declare(gram, math.sqrt(gram * self.max_samples))

    def _residual_round_bound(self, phi: Statistics, weights: np.ndarray, layer: int) -> float:
        projection, _ = self.config.residual_map(layer).parameters(self.phi_dim)
        b = projection.to(torch.float64).numpy()
        feature_diag = quadratic_diagonal(b, phi.gram)
        if self.config.activation == "sigmoid":  # σ(z)² ≤ 2z² + ½
            feature_diag = 2.0 * feature_diag + 0.5 * phi.count
        energy = phi.class_counts - 2.0 * np.einsum("pc,pc->c", weights, phi.cross) \
            + quadratic_diagonal(weights, phi.gram)
        gram = float(feature_diag.max())
        return self._declare(gram, math.sqrt(gram * max(float(energy.max()), 0.0)))

    def privacy_report(self, clients: dict[int, DeepAFLClient] | None, rows_clipped: int) -> dict:
        """The results' ``dp`` block over all 2T + 1 releases (``rows_clipped``: rows the feature map's norm bound
        changed), with each layer clip's row count and each release's σ (the clients' counts None when ``clients``
        is None: a deployed job's sites keep them)."""
        layers = self.config.layers
        entries = (layers + 1) * StatisticsLayout(self.phi_dim, self.num_classes).length \
            + layers * StatisticsLayout(self.config.residual_width, self.num_classes).length
        clipped = None if clients is None else sum(c.entries_clipped for c in clients.values())
        report = self.config.privacy.report(rows_clipped, entries, clipped)
        report["layer_clips"] = self.clips.as_dict()
        report["rows_clipped_by_layer_clips"] = {name: None if clients is None else
                                                 sum(c.rows_clipped[name] for c in clients.values())
                                                 for name in report["layer_clips"]}
        report["release_sigma"] = {"classifier": self._private[CLASSIFIER].sigma,
                                   "residual": self._private[RESIDUAL].sigma}
        return report

    def model(self) -> DeepAFLModel:
        if self._next is not None:
            raise ConfigError("DeepAFL has not finished its rounds yet")
        return DeepAFLModel(self.config, self.scale, list(self.classifiers), list(self.residuals), self.clips)


def centralized(features, labels: np.ndarray, num_classes: int, config: DeepAFLConfig, max_norm: float) -> DeepAFLModel:
    """DeepAFL on pooled data: one client, sums taken as they are (the reference every run must equal)."""
    server = DeepAFLServer(features.shape[1], num_classes, config, len(labels), max_norm)
    client = DeepAFLClient(features, labels, num_classes, config, max_norm)
    while (spec := server.next_round()) is not None:
        server.receive(spec, client.contribute(spec))
    return server.model()


def configure(config) -> DeepAFLConfig:
    privacy = afl.statistics_privacy(config, rounds(config))
    return DeepAFLConfig(config.deep_width, config.residual_width, config.depth, config.deep_lam, config.deep_gamma,
                         config.deep_activation, config.deep_seed, privacy, config.dp_row_rms, config.dp_residual_clip)


def rounds(config) -> int:
    return 2 * config.depth + 1


DP_OPTIONS = ("dp_row_rms", "dp_residual_clip")  # the layer clips, on top of the statistics' DP options


def build(job: DeepAFLConfig, data, max_samples: int, max_norm: float):
    server = DeepAFLServer(data.train_x.shape[1], data.num_classes, job, max_samples, max_norm)
    clients = {k: DeepAFLClient(data.train_x[idx], data.train_y[idx], data.num_classes, job, max_norm)
               for k, idx in enumerate(data.client_indices) if len(idx)}
    return server, clients


def report(job: DeepAFLConfig, server: DeepAFLServer, clients: dict, features) -> dict:
    """Entries clipped to a declared bound (nonzero only when a bound was false, see the module's docstring), and
    the DP block under DP; ``clients`` None: a deployed job, whose sites keep their counts (None here)."""
    dp = {} if job.privacy is None else afl.privacy_block(server, clients, features)
    clipped = None if clients is None else sum(client.clipped for client in clients.values())
    return {**dp, "values_clipped_to_bound": clipped}


def reference(job: DeepAFLConfig, x, y: np.ndarray, num_classes: int, max_norm: float) -> DeepAFLModel:
    """Centralized DeepAFL without DP noise (the difference to it is then the DP error)."""
    return centralized(x, y, num_classes, replace(job, privacy=None), max_norm)


ALGORITHM = Algorithm(
    "deepafl", configure, build,
    options=("depth", "deep_width", "residual_width", "deep_lam", "deep_gamma", "deep_activation", "deep_seed",
             *afl.STATISTICS_DP_OPTIONS, *DP_OPTIONS, "min_class_count"),
    rounds=rounds, validate=lambda config: afl.validate_statistics_dp(config, ("dp_placement", "dp_solve", *DP_OPTIONS)),
    reference=reference, report=report, model_type=DeepAFLModel,
)
