"""Differential privacy of the analytic statistics (issue 14 §1): calibration, noise, and the robust solve.

What is protected: one record (a row x with its label) added to or removed from any client's data.
Rows are bounded by the public feature map (``feature_norm`` l2 or clip, ``max_norm`` R): the clip
norm C of the mechanism IS that R, re-enforced in float64 by the client (float32 rounding can leave
a row at R(1 + 1e-7)). Labels are one-hot scaled by C, so one record moves the packed upper triangle
of G by at most ‖xxᵀ‖_F = ‖x‖² ≤ C² (the triangle holds a subset of xxᵀ's entries) and the cross block
by ‖C x yᵀ‖_F ≤ C²: Δ₂ = √2 C² for the whole vector, and one noise multiplier z covers both blocks
with equal relative noise (unscaled labels would give √(C⁴ + C²), the same at the default C = 1).
n and the class counts are not sent under DP (zeros, layout ``counts: False``): no solve needs them,
and a noise-free count beside noisy sums would be a release no ε accounts for.

Noise on the packed upper triangle is symmetric Gaussian noise on G (the server mirrors it). It is
drawn from a numpy Generator seeded by ``secrets.randbits(128)`` per client, never from the public seed.
A deployed site answers every message in a fresh process and rebuilds its client each time, so a fresh
draw per process would make a repeated call a second release. There the site draws a 256-bit noise
key once per job from ``secrets`` and keeps it in its node (``noise_key``, ``with_noise_key``); each
release's generator is seeded by HMAC-SHA256(key, release name), 128 bits as in one process. The same
round then re-sends the same release, as the in-process client does, and the key never leaves the site.
DP-SGD (algorithms/fedavg.py) seeds its per-round torch generator the same way (``noise_seed``).

Placements: ``local``: each client adds the full σ = z Δ₂, so its vector alone is (ε, δ)-DP, even
in plaintext. ``distributed``: each client adds σ/√t, t the protocol's minimum aggregation size
(``min_clients``): every sum a secure protocol lets the server decrypt holds ≥ t clients, hence noise
of variance ≥ t σ²/t = σ². A client's own share is not private on its own, so this needs a secure
protocol; honest-but-curious clients are assumed to add their share (a client that skips it weakens
the guarantee to the remaining t - 1 shares). It also assumes each round is opened once: a server that
reopens a round without some clients (the ``difference`` attack's retry) learns the difference of two
sums, which carries only the dropped clients' shares; the local placement has no such caveat.

Accounting: each release is one Gaussian mechanism with multiplier z; Opacus' RDP accountant with
sample_rate = 1 is exactly that, composed over the job's releases (AFL and APFL: 1).

Bounds: noisy entries are unbounded, so the round's public bound is the data bound plus a margin of
``TAIL_SIGMAS`` share standard deviations and each client clips its noisy entries to it. Clipping a
noisy vector is post-processing for the local placement; for the distributed one the released sum
equals (data + total noise) unless some entry was clipped, whose probability (``clip_probability``,
below 1e-15 for any realistic vector) is added to δ in the report.

The solve: the noisy Gram is indefinite (its noise has a semicircle spectrum on ±2σ_sum√d), so the
server solves by eigendecomposition. ``eig-clip`` raises every eigenvalue below the floor
``EIG_FLOOR`` · σ_sum√d to that floor (directions the noise dominates get a ridge of the noise's
size; directions the data dominate keep their eigenvalue), then adds γ. ``adassp`` adds AdaSSP's
ridge (Wang 2018) σ_sum √(d log(2d²/ρ)), ρ = 0.05, to the whole spectrum with λ̃_min = 0: nobody holds
ΣG to estimate its λ_min privately, and the Weyl lower bound Σ_k λ_min(G_k) is 0 as soon as a client
holds fewer rows than d (every client of mnist5k, K = 20), so AdaSSP's third of the budget would buy
nothing. Both use public quantities (σ_sum, d) only: no budget. The floor factor 0.25 was chosen on a
validation split (20 %) of mnist5k's training set over {0, 0.1, 0.25, 0.5, 1, 2}, by validation accuracy
averaged over ε ∈ {0.5 … 16} and both placements (0.702; 0.1: 0.701, 0.5: 0.695, 0: 0.679, 2: 0.650;
AdaSSP's ridge 0.665), so it is the default (benchmarks/results/dp_statistics.json records the selection).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import warnings
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import cached_property

import numpy as np
import torch

from secure_afl.errors import ConfigError

PLACEMENTS = ("local", "distributed")
SOLVES = ("eig-clip", "adassp")
ACCOUNTANT = "rdp"  # Opacus RDPAccountant at sample rate 1: exactly the Gaussian mechanism, composed
TAIL_SIGMAS = 10.0  # the public bound's margin, in share standard deviations
ADASSP_RHO = 0.05  # AdaSSP's failure probability of its ridge bound
EIG_FLOOR = 0.25  # eig-clip's floor in units of σ_sum√d (selected on validation, see above)


def _rdp_accountant(noise_multiplier: float, releases: int):
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, releases)]
    return accountant


def epsilon_of(noise_multiplier: float, delta: float, releases: int) -> float:
    """ε at δ of ``releases`` Gaussian releases of multiplier z (RDP, converted at the best order)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha" for tiny ε
        return float(_rdp_accountant(noise_multiplier, releases).get_epsilon(delta))


def noise_multiplier_for(epsilon: float, delta: float, releases: int) -> float:
    """The smallest z (to Opacus' 0.01 tolerance on ε) whose ``releases`` Gaussian releases stay within (ε, δ)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0,
                                              steps=releases, accountant=ACCOUNTANT))
        except ValueError as exc:  # RDP's finite orders cannot certify a tiny ε at this δ, whatever z
            raise ConfigError(f"ε = {epsilon:g} at δ = {delta:g} over {releases} release(s) is below what the RDP "
                              f"accountant can certify ({exc}); raise ε or δ") from None


def statistics_sensitivity(clip: float) -> float:
    """L2 sensitivity of a packed vector (upper triangle of G, then H with labels scaled by C) to one record."""
    return math.sqrt(2.0) * clip**2


@dataclass(frozen=True)
class StatisticsPrivacy:
    """One job's DP on the statistics: everything public (ε, δ, C, placement, t), so the server knows σ."""

    epsilon: float | None  # None: z given directly
    delta: float
    clip: float  # C = the feature map's max_norm
    placement: str
    min_clients: int  # t: the fewest clients any sum may hold (1 for the local placement's accounting)
    clients: int  # P: clients asked per round (the server's estimate of the noise in a sum)
    releases: int = 1
    solve: str = "eig-clip"
    noise: float | None = None  # z, when given instead of ε
    noise_key: bytes | None = field(default=None, repr=False, compare=False)  # a deployed site's secret (docstring)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"unknown DP placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if self.solve not in SOLVES:
            raise ConfigError(f"unknown DP solve {self.solve!r}; choose one of {', '.join(SOLVES)}")
        if (self.epsilon is None) == (self.noise is None):
            raise ConfigError("DP on the statistics needs exactly one of a target ε (--dp-epsilon) or a noise "
                              "multiplier (--dp-noise)")
        if self.epsilon is not None and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"the target ε must be a positive finite number, got {self.epsilon}")
        if self.noise is not None and not (self.noise > 0 and math.isfinite(self.noise)):
            raise ConfigError(f"the noise multiplier must be positive and finite, got {self.noise}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"δ must lie in (0, 1), got {self.delta}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"the clip norm C (--max-norm) must be positive and finite, got {self.clip}")
        if not 1 <= self.min_clients <= self.clients:
            raise ConfigError(f"min_clients must lie in [1, {self.clients}], got {self.min_clients}")

    @cached_property
    def noise_multiplier(self) -> float:
        if self.noise is not None:
            return self.noise
        return noise_multiplier_for(self.epsilon, self.delta, self.releases)

    def with_clip(self, clip: float) -> StatisticsPrivacy:
        """The same mechanism (same z, placement and t) on a release whose rows are clipped to ``clip``: DeepAFL's
        layers release statistics of rows with their own public clip norms."""
        return replace(self, clip=clip, epsilon=None, noise=self.noise_multiplier)

    @property
    def sigma(self) -> float:
        """σ = z Δ₂: the standard deviation of the noise every released sum carries at least."""
        return self.noise_multiplier * statistics_sensitivity(self.clip)

    @property
    def share_sigma(self) -> float:
        """What one client adds: σ (local) or σ/√t (distributed, so any ≥ t survivors sum to ≥ σ)."""
        return self.sigma if self.placement == "local" else self.sigma / math.sqrt(self.min_clients)

    @property
    def sum_sigma(self) -> float:
        """Noise standard deviation of a sum over all P clients asked (what the server's solve plans for)."""
        return self.share_sigma * math.sqrt(self.clients)

    def bound(self, data_bound: float) -> float:
        """The public bound of a noisy entry: the data bound plus ``TAIL_SIGMAS`` share deviations."""
        return data_bound + TAIL_SIGMAS * self.share_sigma

    def clip_probability(self, entries: int) -> float:
        """Union bound on the chance that any of ``entries`` noisy entries of any client leaves the margin."""
        return min(1.0, entries * self.clients * math.erfc(TAIL_SIGMAS / math.sqrt(2.0)))

    def release(self, vector: np.ndarray, layout) -> np.ndarray:
        """The noise-free vector the mechanism noises (its sensitivity is ``statistics_sensitivity``): a client's
        packed statistics with H's labels scaled by C, n and the counts zeroed (not sent)."""
        released = np.array(vector, dtype=np.float64)
        sent = layout.triangle + layout.dim * layout.num_classes
        released[layout.triangle:sent] *= self.clip
        released[sent:] = 0.0
        return released

    def privatize(self, vector: np.ndarray, layout, bound: float, release: str) -> tuple[np.ndarray, int]:
        """(noisy vector, entries clipped to ``bound``) of one client's packed statistics for the round named
        ``release``: ``release`` plus Gaussian noise of std ``share_sigma`` on G's triangle and H, drawn from a
        generator ``noise_seed`` seeds (a fresh secret, or the site's key and ``release``)."""
        noisy = self.release(vector, layout)
        sent = layout.triangle + layout.dim * layout.num_classes
        generator = np.random.default_rng(noise_seed(self.noise_key, release, 128))
        noisy[:sent] += generator.normal(0.0, self.share_sigma, sent)
        clipped = int(np.count_nonzero(np.abs(noisy) > bound))
        np.clip(noisy, -bound, bound, out=noisy)
        return noisy, clipped

    def report(self, rows_clipped: int, entries: int, entries_clipped: int | None) -> dict:
        """The ``dp`` block of the results: the guarantee and how it was met (``entries_clipped`` None: the count
        stays with the sites of a deployed job)."""
        z = self.noise_multiplier
        return {"scope": "statistics", "epsilon": epsilon_of(z, self.delta, self.releases),
                "target_epsilon": self.epsilon, "delta": self.delta, "noise_multiplier": z, "sigma": self.sigma,
                "share_sigma": self.share_sigma, "sensitivity": statistics_sensitivity(self.clip), "clip": self.clip, "placement": self.placement,
                "min_clients": self.min_clients, "releases": self.releases, "accountant": f"opacus {ACCOUNTANT}",
                "rows_clipped": rows_clipped, "entries_clipped_to_bound": entries_clipped,
                "clip_probability": self.clip_probability(entries), "solve": self.solve,
                "noise_rng": "numpy PCG64 seeded from secrets.randbits(128) per client",
                "reference": "max_rel_diff_to_centralized compares with the noise-free centralized model: the DP error"}


def noise_seed(key: bytes | None, release: str, bits: int) -> int:
    """The seed (``bits`` ≤ 256 bits) of the generator that draws the noise of the release named ``release``: fresh
    from ``secrets`` without a key, as one process draws each release once; under a deployed site's ``key``, the
    leading bits of HMAC-SHA256(key, release), so every process of the site draws the same noise for that release
    and a repeated call re-sends it (module docstring). DP on the statistics takes 128 bits, DP-SGD's torch
    generator 63."""
    if key is None:
        return secrets.randbits(bits)
    digest = hmac.new(key, release.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest, "big") >> (8 * len(digest) - bits)


def with_noise_key(job, key: bytes):
    """An algorithm's configuration (``Algorithm.configure``'s, nested dataclasses) with every DP configuration in it
    (one with a ``noise_key`` field: ``StatisticsPrivacy``, DP-SGD's ``fedavg.DPConfig``) drawing its noise under a
    deployed site's ``key`` (module docstring); unchanged without DP."""
    if not is_dataclass(job) or isinstance(job, type):
        return job
    if any(f.name == "noise_key" for f in fields(job)):
        return replace(job, noise_key=key)
    changed = {f.name: with_noise_key(getattr(job, f.name), key) for f in fields(job) if f.init}
    changed = {name: value for name, value in changed.items() if value is not getattr(job, name)}
    return replace(job, **changed) if changed else job


def clip_rows(rows: torch.Tensor, norm: float) -> tuple[torch.Tensor, int]:
    """(rows scaled down to norm ≤ ``norm`` in float64, how many were scaled): the clipping that bounds one
    record's contribution to a release."""
    rows = rows.to(torch.float64)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return rows * (norm / norms.clamp_min(norm)), int((norms > norm).sum())


def noisy_ridge_solve(gram: np.ndarray, cross: np.ndarray, gamma: float, sum_sigma: float, solve: str,
                      floor: float = EIG_FLOOR) -> np.ndarray:
    """W for a noisy, possibly indefinite Gram: eigendecomposition, then ``spectral_solve``; never fails on an
    indefinite matrix."""
    return spectral_solve(*np.linalg.eigh(gram), cross, gamma, sum_sigma, solve, floor)


def spectral_solve(values: np.ndarray, vectors: np.ndarray, cross: np.ndarray, gamma: float, sum_sigma: float,
                   solve: str, floor: float = EIG_FLOOR) -> np.ndarray:
    """W from the Gram's eigendecomposition: ``robust_spectrum``, then γ (and γ as the last floor, for AdaSSP's
    ρ-probability miss)."""
    values = np.maximum(robust_spectrum(values, sum_sigma, solve, floor) + gamma, max(gamma, np.finfo(np.float64).tiny))
    return vectors @ ((vectors.T @ cross) / values[:, None])


def robust_spectrum(values: np.ndarray, sum_sigma: float, solve: str, floor: float = EIG_FLOOR) -> np.ndarray:
    """A noisy Gram's eigenvalues made safe to invert: ``eig-clip`` raises them to ``floor`` · σ_sum√d,
    ``adassp`` adds AdaSSP's ridge σ_sum √(d log(2d²/ρ))."""
    dim = len(values)
    if solve == "eig-clip":
        return np.maximum(values, floor * sum_sigma * math.sqrt(dim))
    return values + sum_sigma * math.sqrt(dim * math.log(2.0 * dim**2 / ADASSP_RHO))
