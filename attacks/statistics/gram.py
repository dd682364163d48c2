"""Reconstruct a client's private feature rows from its Gram statistics (attacks spec, fact 5).

Why it works
------------
Let X (n × d, n ≤ d) be one client's rows, Y (n × C) their one-hot labels, G = XᵀX and H = XᵀY.
With G = VΛVᵀ (rank n), Z = Λ^{1/2}Vᵀ (n × d) and M = Λ^{-1/2}VᵀH (n × C), there is an orthogonal Q
with X = QZ and QM = Y. So row i is x_i = Zᵀq_i, where the q_i (rows of Q) are orthonormal and
Mᵀq_i = e_{c_i}: finding the rows means finding n orthonormal vectors q.

Column j of Z is z_j = Σ_i X[i, j] q_i, a combination of the q's of the rows that use coordinate j.
Sparse nonnegative features (pooled ReLU activations) make those combinations short:

* Peeling. When a single row i uses coordinate j, z_j = X[i, j] q_i and q_i = z_j / ‖z_j‖. Such a
  column is recognised without knowing i: Mᵀz_j / ‖z_j‖ holds the class sums of the column's
  entries over their ℓ2 norm, which is one-hot with value 1 exactly when one row uses j (ℓ1 ≥ ℓ2,
  with equality only for a single term). Removing the found q's (restricting Z and M to the
  orthogonal complement, exact because the q's are orthonormal) leaves the same problem for the
  other rows, and coordinates that were shared only with found rows become pure: the peeling
  cascades. A class with one row left gives that row directly: its column of M is its q.
* Splitting. When no coordinate is pure, take a coordinate j and the set J of coordinates never used
  together with it (ZᵀZ = G restricted to the rows left is zero there: it sums nonnegative products).
  Every row that uses j, and any other row whose support avoids J, has its q orthogonal to all of
  z_J; generically no other direction is, so the null space W of Z_Jᵀ is spanned by a few rows'
  q's, and (WᵀZ, WᵀM) is a small instance of the same problem (its class counts are the diagonal of
  MᵀWWᵀM, which must come out diagonal and integral). Few rows rarely share all their coordinates,
  so it peels, and each row it yields lets the large instance peel further.
* Polishing. A found q is brought to machine precision by least squares on its zeros:
  min ‖Z_Jᵀq‖ subject to Mᵀq = e_c, with J the coordinates where Zᵀq vanishes. When J holds only
  true zeros of a row whose zeros pin it down (a vertex of {q : Zᵀq ≥ 0, Mᵀq = e_c}; every row of
  the mnist5k clients is one), the solution is that row exactly. Polishing against the initial
  instance keeps the rounding errors of found rows from piling up in the deflated one.
* Estimating. Rows the exact steps cannot reach (dense features, rows sharing every coordinate)
  are estimated by alternating projections: orthogonal Procrustes with QM = Y held, against rows
  projected onto {x ≥ 0, ‖x‖ = R}. An estimate close enough to a row polishes onto it, is
  certified, and lets the exact steps go on; the others are returned uncertified.

Certificate. For x = Zᵀu in the row space of G, xᵀG⁺x = ‖u‖² and xᵀG⁺H = Mᵀu. A true row has
‖u‖ = 1 (G − xxᵀ stays positive semidefinite, of rank n − 1), Mᵀu = e_c exactly and x ≥ 0; a row
is certified when these hold to rounding (relative residual ≤ ``tol``) and its zeros pin it down.
A rotation of the rows breaks the equalities, and so does any mixture with nonnegative weights.
The pinning matters: any orthogonal Q with QM = Y meets the equalities, so an estimate is
certified only once it has polished onto a vertex. A signed mixture that is such a vertex, of unit
norm, with one-hot class sums, would pass by coincidence; none did on the mnist5k clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from threadpoolctl import threadpool_limits

from attacks.base import Attack, NotApplicable, Reconstruction, ServerView, register
from attacks.statistics.closed_form import HONEST_BUT_CURIOUS, readable_clients
from attacks.statistics.rounds import round_key


@dataclass(frozen=True)
class GramRecovery:
    applicable: bool
    reason: str  # why the attack does not apply, or ""
    rows: np.ndarray  # (m, d) float64 recovered rows, m ≤ n
    labels: np.ndarray  # (m,) int64 class of each row
    certified: np.ndarray  # (m,) bool: the row passed the certificate (exact to rounding)
    residual: np.ndarray  # (m,) float64 the certificate's residual of each row


def recover_rows(
    gram: np.ndarray,
    cross: np.ndarray,
    class_counts: np.ndarray,
    norm: float,
    nonnegative: bool = True,
    seed: int = 0,
    tol: float = 1e-8,
    projection_steps: int = 300,
    projection_rounds: int = 10,
) -> GramRecovery:
    """Every row of one client that (G, H, counts) give away: exact rows certified, the rest estimated.

    ``norm`` is the public row norm R, ``nonnegative`` whether features are known to be ≥ 0 (the
    certificate and the estimates then use it), ``tol`` the certificate's relative tolerance;
    ``projection_rounds`` rounds of ``projection_steps`` alternating projections are spent on the
    rows the exact steps miss.
    """
    gram, cross = np.asarray(gram, dtype=np.float64), np.asarray(cross, dtype=np.float64)
    counts = np.asarray(class_counts)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or cross.shape != (gram.shape[0], counts.shape[0]):
        raise ValueError(f"gram must be d × d and cross d × C with C = len(class_counts); got {gram.shape}, "
                         f"{cross.shape} and {counts.shape[0]} counts")
    if norm <= 0 or np.any(counts < 0) or np.any(counts != np.rint(counts)):
        raise ValueError("norm must be positive and class_counts nonnegative integers")
    counts = counts.astype(np.int64)
    n, d = int(counts.sum()), gram.shape[0]
    if n > d:
        return _not_applicable(f"{n} rows in {d} dimensions: the Gram matrix has many factorisations", d)
    if n == 0 or not (np.isfinite(gram).all() and np.isfinite(cross).all()):
        return _not_applicable("no rows, or statistics with NaN/Inf", d)
    factors = _factor(gram, cross, counts, seed)
    if isinstance(factors, str):
        return _not_applicable(factors, d)
    z, m = factors
    solver = _Unmixer(z, m, counts, tol, nonnegative, norm, anchored=True)
    solver.solve()
    rng, guesses = np.random.default_rng(seed), []
    for _ in range(projection_rounds):
        if not solver.left.sum():
            break
        guesses = solver.estimate(projection_steps, rng)
        if not solver.accept(guesses, snap=True):
            break
        solver.solve()
        guesses = []
    exact = len(solver.labels)
    if solver.left.sum():
        solver.record(guesses or solver.estimate(projection_steps, rng))
    labels = np.asarray(solver.labels, dtype=np.int64)
    residual = _residual(solver.found, z, m, labels, nonnegative, norm)
    certified = (residual <= tol) & (np.arange(labels.size) < exact)
    return GramRecovery(True, "", (z.T @ solver.found).T, labels, certified, residual)


def _not_applicable(reason: str, d: int) -> GramRecovery:
    return GramRecovery(False, reason, np.zeros((0, d)), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0))


def _factor(gram: np.ndarray, cross: np.ndarray, counts: np.ndarray, seed: int):
    """(Z, M) with ZᵀZ = G and ZᵀM = H, or why not. The range of G is found from G times n + 8 random
    vectors: its rank is n exactly when the rows are independent, and the 8 extra must come out null."""
    n, d = int(counts.sum()), gram.shape[0]
    probe = np.random.default_rng(seed).standard_normal((d, min(n + 8, d)))
    basis = np.linalg.qr(gram @ probe)[0]
    values, vectors = np.linalg.eigh(basis.T @ gram @ basis)
    values, vectors = values[::-1], basis @ vectors[:, ::-1]
    rank = int((values > values[0] * 1e-10).sum())
    if rank != n:
        return f"rank(G) = {rank} but the counts sum to {n}: rows are dependent or the statistics inconsistent"
    values, vectors = values[:n], vectors[:, :n]
    z = np.sqrt(values)[:, None] * vectors.T
    m = (vectors.T @ cross) / np.sqrt(values)[:, None]
    if np.abs(m.T @ m - np.diag(counts)).max() > 1e-6 * n:
        return "HᵀG⁺H is not diag(counts): the cross statistics do not belong to this Gram and these counts"
    return z, m


def _residual(u: np.ndarray, z: np.ndarray, m: np.ndarray, labels: np.ndarray, nonnegative: bool, norm: float):
    """Per column of u: max(|xᵀG⁺x − 1|, ‖xᵀG⁺H − e_c‖∞, negative part of x / R) with x = Zᵀu."""
    if u.shape[1] == 0:
        return np.zeros(0)
    parts = [np.abs((u * u).sum(0) - 1), np.abs(m.T @ u - np.eye(m.shape[1])[labels].T).max(0)]
    if nonnegative:
        parts.append(np.maximum(-(z.T @ u).min(0), 0) / norm)
    return np.max(parts, axis=0)


class _Unmixer:
    """The rows not found yet, in coordinates of the orthogonal complement of those found.

    ``z``, ``m`` are the current instance, in coordinates whose first ``head`` axes span the columns
    of M of the classes left (so Mᵀq = e_c fixes q's head and leaves its tail free); ``basis`` maps
    them to the caller's coordinates, where ``found`` keeps the q of every row found.
    """

    def __init__(self, z, m, counts, tol, nonnegative, norm, anchored=False):
        self.left = counts.copy()
        self.tol, self.nonnegative, self.norm = tol, nonnegative, norm
        self.z, self.m, self.basis = z, m, np.eye(z.shape[0])
        self._restrict(np.eye(z.shape[0]))
        self.found = np.zeros((z.shape[0], 0))
        self.labels: list[int] = []
        self.origin = (self.z, self.m, self.head, self.basis) if anchored else None

    def solve(self) -> None:
        self.peel()
        while self.left.sum() and self.split():
            self.peel()

    def peel(self) -> None:
        """Accept rows from pure columns and from classes with one row left until none is found."""
        while self.left.sum():
            cands = [(self.m[:, c].copy(), c) for c in np.flatnonzero(self.left == 1)]
            norms = np.linalg.norm(self.z, axis=0)
            live = np.flatnonzero(norms > 1e-9 * norms.max())
            ratio = self.m.T @ (self.z[:, live] / norms[live])
            cls = np.abs(ratio).argmax(0)
            sign = np.sign(ratio[cls, np.arange(live.size)])
            pure = np.abs(sign * ratio - np.eye(len(self.left))[:, cls]).max(0) < 1e-5
            for j in np.flatnonzero(pure)[np.argsort(-norms[live[pure]])]:
                cands.append((sign[j] * self.z[:, live[j]] / norms[live[j]], cls[j]))
            if not self.accept(cands):
                return

    def split(self, max_rows: int = 40, tries: int = 24) -> bool:
        """Solve the small instances spanned by the rows that avoid a coordinate's non-neighbours."""
        norms = np.linalg.norm(self.z, axis=0)
        live = np.flatnonzero(norms > 1e-9 * norms.max())
        unit = self.z[:, live] / norms[live]
        apart = np.abs(unit.T @ unit) <= 1e-8
        size = apart.sum(1)
        r = self.z.shape[0]
        cands = []
        for j in np.argsort(-size)[:tries]:
            if size[j] == 0 or size[j] < r - max_rows:
                break
            vectors, sing, _ = np.linalg.svd(self.z[:, live[apart[j]]], full_matrices=True)
            w = vectors[:, _rank(sing, r):]
            mw = w.T @ self.m
            sums = mw.T @ mw
            counts = np.rint(np.diag(sums)).astype(np.int64)
            if not 0 < w.shape[1] <= max_rows or counts.sum() != w.shape[1]:
                continue
            if np.abs(sums - np.diag(counts)).max() > 1e-4:
                continue
            # the sub-instance only proposes: its rows are polished and certified here
            sub = _Unmixer(w.T @ self.z, mw, counts, 1e-4, self.nonnegative, self.norm)
            sub.peel()
            cands += [(w @ u, c) for u, c in zip(sub.found.T, sub.labels)]
        return self.accept(cands) > 0

    def accept(self, cands, snap: bool = False) -> int:
        """Polish and certify candidate (q, class) pairs; record the rows that pass and restrict to
        their complement. With ``snap`` the candidates are estimates and must polish onto a vertex."""
        taken, found, classes = [], [], []
        for u, c in cands:
            if classes.count(c) >= self.left[c] or any(abs(u @ t) > 0.5 for t in taken):
                continue
            res = np.inf if snap else self._check(u, c)
            while res > self.tol * 1e-2:  # each polish sees the zeros more sharply
                better = _polish(self.z, self.m, self.head, u, c, self.nonnegative)
                if better is None or (r := self._check(better, c)) > 0.1 * res:
                    break
                u, res = better, r
            initial = self.basis @ u
            if self.tol * 1e-1 < res < np.inf and self.origin is not None:
                z0, m0, head0, basis0 = self.origin
                better = _polish(z0, m0, head0, basis0.T @ initial, c, self.nonnegative)
                if better is not None:
                    r = _residual(better[:, None], z0, m0, np.array([c]), self.nonnegative, self.norm)[0]
                    if r < res:
                        initial = basis0 @ better
                        u, res = self.basis.T @ initial, r
            if res <= self.tol:
                taken.append(u / np.linalg.norm(u))
                found.append(initial)
                classes.append(c)
        if taken:
            self.found = np.hstack([self.found, np.array(found).T])
            self.labels += classes
            for c in classes:
                self.left[c] -= 1
            self._restrict(np.linalg.qr(np.array(taken).T, mode="complete")[0][:, len(taken):])
        return len(taken)

    def estimate(self, steps: int, rng: np.random.Generator) -> list:
        """(q, class) guesses for the rows left by alternating projections: Q = Q_fixed + B_Y A B_Mᵀ
        keeps QM = Y with A orthogonal, against rows projected onto {x ≥ 0 (when known), ‖x‖ = R}."""
        labels = np.repeat(np.arange(len(self.left)), self.left)
        present = np.unique(labels)
        y = (labels[:, None] == present).astype(np.float64)
        m = self.m[:, present]
        fixed = (y / y.sum(0)) @ (m.T @ self.z)
        by, bm = sla.null_space(y.T), sla.null_space(m.T)
        zc = bm.T @ self.z
        a = np.linalg.qr(rng.standard_normal((by.shape[1], by.shape[1])))[0]
        for _ in range(steps if by.shape[1] else 0):
            x = fixed + by @ (a @ zc)
            if self.nonnegative:
                x = np.maximum(x, 0)
            x *= self.norm / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
            outer, _, inner = np.linalg.svd(by.T @ (x - fixed) @ zc.T)
            a = outer @ inner
        q = (y / y.sum(0)) @ m.T + by @ a @ bm.T
        return list(zip(q, labels))

    def record(self, guesses) -> None:
        """Keep uncertified guesses for the rows left."""
        self.found = np.hstack([self.found, self.basis @ np.array([u for u, _ in guesses]).T])
        self.labels += [int(c) for _, c in guesses]
        self.left[:] = 0

    def _check(self, u, c) -> float:
        return float(_residual(u[:, None], self.z, self.m, np.array([c]), self.nonnegative, self.norm)[0])

    def _restrict(self, keep) -> None:
        """Move to the span of ``keep``'s orthonormal columns, M's columns of classes left up front."""
        present = np.flatnonzero(self.left)
        rotation = np.linalg.qr(keep.T @ self.m[:, present], mode="complete")[0]
        keep = keep @ rotation
        self.z, self.m, self.basis = keep.T @ self.z, keep.T @ self.m, self.basis @ keep
        self.head = present.size


def _rank(sing, rows):
    """Numerical rank from the widest gap (≥ 10³) among singular values below 10⁻⁶ of the largest:
    rounding errors of found rows leave a noise floor that a fixed threshold would have to guess."""
    s = np.concatenate([sing, np.zeros(rows - sing.size)]) / sing[0]
    ratio = s[:-1] / np.maximum(s[1:], 1e-300)
    ratio[s[1:] > 1e-6] = 0
    i = int(ratio.argmax())
    return i + 1 if ratio[i] >= 1e3 else rows


def _polish(z, m, head, u, c, nonnegative):
    """argmin ‖Z_Jᵀq‖ s.t. Mᵀq = e_c, with J the near-zeros of Zᵀu (within ten times the rounding noise
    that its negative entries reveal). In these coordinates the constraint fixes q's first ``head``
    entries; the tail solves normal equations, refined once. None when the zeros do not pin q down."""
    x = z.T @ u
    noise = max(-x.min(), 1e-14 * np.abs(x).max()) if nonnegative else 1e-8 * np.abs(x).max()
    zeros = np.abs(x) <= 10 * noise
    q = m[:, c] / (m[:, c] @ m[:, c])  # its tail is zero: M's columns live in the head
    if head == len(q):
        return q
    a = z[head:, zeros].T
    b = z[:head, zeros].T @ q[:head]
    try:
        chol = sla.cho_factor(a.T @ a, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    pivots = np.abs(np.diag(chol[0]))
    if pivots.min() <= 1e-7 * pivots.max():
        return None
    tail = u[head:]
    for _ in range(2):
        tail = tail - sla.cho_solve(chol, a.T @ (a @ tail + b), check_finite=False)
    q[head:] = tail
    return q


# -- the registered attack ---------------------------------------------------------------------
NONNEGATIVE_BACKBONES = ("efficientnet_lite0",)  # pooled ReLU6 activations: every feature ≥ 0
NONNEGATIVE_BUFFERS = ("relu", "sigmoid")


def rows_are_nonnegative(config: dict) -> bool:
    """What the public configuration says about the sign of X's rows."""
    if config.get("buffer_width"):
        return config["buffer_activation"] in NONNEGATIVE_BUFFERS
    return config.get("backbone") in NONNEGATIVE_BACKBONES


@register
class GramAttack(Attack):
    name = "gram"
    threat_model = (HONEST_BUT_CURIOUS + "; resolves the factorisation with public priors: every row has the public "
                    "norm R and is nonnegative (the default backbone's pooled ReLU6 features, or a ReLU/sigmoid buffer)")
    metric = "cosine"
    threshold = 0.95
    targets = "samples"

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        if not rows_are_nonnegative(view.config):
            raise NotApplicable("the public configuration does not make the feature rows nonnegative (another backbone "
                                "or a signed buffer); the norm prior alone does not fix the factorisation's rotation")
        for item, client, stats, counts, _ in readable_clients(view, rounds):
            if item.space != "x" or item.norm is None:
                rounds[round_key(item.entry)] = f"rows live in {item.space} with no public norm: not attacked"
                continue
            with threadpool_limits(1):  # many mid-sized factorisations: extra BLAS threads only synchronise (measured
                # K = 20: 16–20 s on one thread, 55–340 s on two threads of a loaded 2-core machine)
                recovery = recover_rows(stats.gram, stats.cross, counts, item.norm, nonnegative=True)
            for row, label, certified in zip(recovery.rows, recovery.labels, recovery.certified):
                yield Reconstruction("feature", item.entry.name, client, "x", row, int(label), bool(certified))
