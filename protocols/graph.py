"""Who masks with whom, how many shares rebuild a secret, and how many signatures certify a round.

Every client shares its secrets with its k neighbours and itself (k + 1 holders) with threshold
t. The complete graph (k = n − 1) is Bonawitz et al.'s SecAgg; for large n a ring lattice
(Harary graph H_{k,n}) under a random relabelling gives each client k neighbours, which is
SecAgg+ (Bell et al. 2020): cost O(k · L) per client instead of O(n · L).

Quorum. Before any share is revealed, the survivors sign the survivor / dropped / key-sharer sets
(the consistency round, protocols/masking/client.py), and a client reveals only under sets
certified by q = max(t, ⌊2n/3⌋ + 1, m) signatures of distinct roster clients (m: the job's minimum
aggregation size, protocols/minimum.py, at most ⌊2n/3⌋ + 1 in a round of the job's usual size).
Each honest client signs once per session, so two different certified sets need 2q signatures
from n clients: impossible while fewer than 2q − n clients collude (n/3 with the default). Then every honest
client reveals under the same sets, and no client is ever "survivor" to some holders and "dropped"
to others.

Threshold. Under one certified set, the masking client's module docstring shows that the server
can rebuild an honest client's input only if t − 1 of its k neighbours collude with it (or t hold
shares of one secret). Clients still refuse t ≤ (k + 1)/2 outright, so that even if the quorum
were broken (≥ 2q − n colluders) a split view would need 2t ≤ k + 1 + c colluding holders. The
default is t = ⌊2(k+1)/3⌋ + 1.

Neighbours. The default k is the smallest even k for which, with clients corrupt independently
with probability γ and dropping with probability δ, union bounds give
P[some client has ≥ t − 1 corrupt neighbours, or ≥ 2q − n clients are corrupt] ≤ 2^-σ (security)
and P[some client keeps < t surviving holders, or fewer than q clients are left to sign] ≤ 2^-η
(failure), with t chosen for that k: the default t when it meets both, else the t with the
largest worse margin. When no k < n − 1 does, the graph is complete, with such a t if one meets
both. Small jobs often cannot meet the defaults whatever k and t (at n = 20, ≥ 2q − n = 8 corrupt
clients out of 20 already has probability 2^-18.4 at γ = 5 %): then the default t of the complete
graph is kept, ``meets_targets`` is False and the protocol warns once per run, naming the bounds it
does reach. The assumptions (γ, δ) and targets (σ, η) are the job's options. The relabelling is drawn from the
session id (a hash of every client's fresh public keys), so every client computes the same graph
itself and the server cannot choose it.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from protocols.errors import ParameterError
from protocols.minimum import supermajority
from protocols.prg import keystream


class TargetsNotMetWarning(UserWarning):
    """No neighbourhood size and threshold reach the job's security and failure targets for its size."""


@dataclass(frozen=True)
class Targets:
    """Assumptions and targets behind the automatic choice of k (each client independently)."""

    corrupt_fraction: float = 0.05  # γ: probability that a client colludes with the server
    dropout_fraction: float = 0.10  # δ: probability that a client drops during the round
    security_bits: int = 40  # σ: P[a client's secrets are exposed] ≤ 2^-σ
    failure_bits: int = 20  # η: P[the round cannot be unmasked] ≤ 2^-η

    def __post_init__(self):
        for name in ("corrupt_fraction", "dropout_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ParameterError(f"{name} must be in [0, 1), got {value}")
        if self.security_bits < 1 or self.failure_bits < 1:
            raise ParameterError("security_bits and failure_bits must be positive")


@dataclass(frozen=True)
class GraphParameters:
    clients: int
    neighbours: int  # k; n − 1 means the complete graph
    threshold: int  # t, out of k + 1 holders
    security_log2: float  # log2 of the union bound on exposing some client (−inf: impossible under the model)
    failure_log2: float  # log2 of the union bound on an unrecoverable round
    targets: Targets = Targets()

    @property
    def meets_targets(self) -> bool:
        return _meets(self.security_log2, self.failure_log2, self.targets)

    def shortfall(self) -> str:
        """One line for a warning: what was asked, what these parameters reach, and what would help."""
        t = self.targets
        graph = "the complete graph" if self.complete else f"{self.neighbours} neighbours"
        return (f"masking over {self.clients} clients cannot meet 2^-{t.security_bits} security and 2^-{t.failure_bits} "
                f"failure with {t.corrupt_fraction:.0%} corrupt clients and {t.dropout_fraction:.0%} dropouts assumed; "
                f"{graph} with threshold {self.threshold} reaches security 2^{self.security_log2:.1f} and failure "
                f"2^{self.failure_log2:.1f}. Enrol more clients, or state other assumptions or targets "
                "(--corrupt-fraction, --dropout-fraction, --security-bits, --failure-bits)")

    @property
    def complete(self) -> bool:
        return self.neighbours == self.clients - 1

    @property
    def max_dropouts(self) -> int:
        """Dropouts that every client's secrets survive: a dropped client needs t of its k neighbours,
        and q clients must be left to sign the survivor sets."""
        return min(self.neighbours - self.threshold, self.clients - self.quorum)

    @property
    def quorum(self) -> int:
        return quorum(self.clients, self.threshold)


def default_threshold(neighbours: int) -> int:
    return 2 * (neighbours + 1) // 3 + 1


def minimum_threshold(neighbours: int) -> int:
    """The smallest t clients accept: a strict majority of the k + 1 holders."""
    return (neighbours + 1) // 2 + 1


def quorum(clients: int, threshold: int, min_clients: int = 1) -> int:
    """Signatures that certify a round's survivor sets: max(t, ⌊2n/3⌋ + 1, m) (see the module docstring; m, the
    job's minimum aggregation size, keeps a round the server made smaller than the job's as safe:
    protocols/minimum.py)."""
    return max(threshold, supermajority(clients), min_clients)


def _log2_sum(*terms: float) -> float:
    top = max(terms)
    if top == -math.inf:
        return top
    return top + math.log2(sum(2.0 ** (x - top) for x in terms))


@lru_cache(maxsize=1 << 16)
def _log2_tail_at_least(k: int, p: float, m: int) -> float:
    """log2 P[Binomial(k, p) ≥ m] (cached: the parameter search asks for the same tails many times)."""
    if m <= 0:
        return 0.0
    if m > k or p == 0:
        return -math.inf
    if p == 1:
        return 0.0
    terms = [math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1) + i * math.log(p) + (k - i) * math.log1p(-p)
             for i in range(m, k + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(x - top) for x in terms))) / math.log(2)


def _meets(security: float, failure: float, targets: Targets) -> bool:
    return security <= -targets.security_bits and failure <= -targets.failure_bits


def _margin(security: float, failure: float, targets: Targets) -> float:
    """The worse of the two margins, in bits, by which a choice beats its targets (negative: misses one)."""
    return min(-security - targets.security_bits, -failure - targets.failure_bits)


def _threshold_for(clients: int, neighbours: int, targets: Targets) -> int | None:
    """The threshold for k = ``neighbours`` that meets both targets: the default when it does, else the one with
    the largest worse margin; None when none does."""
    default = default_threshold(neighbours)
    if _meets(*bounds(clients, neighbours, default, targets), targets):
        return default
    thresholds = range(minimum_threshold(neighbours), neighbours + 2)
    # security only improves and failure only worsens as t grows, so each target holds on an interval of t
    lowest = bisect_left(thresholds, True,
                         key=lambda t: bounds(clients, neighbours, t, targets)[0] <= -targets.security_bits)
    highest = bisect_left(thresholds, True,
                          key=lambda t: bounds(clients, neighbours, t, targets)[1] > -targets.failure_bits) - 1
    if lowest > highest:
        return None
    # the worse margin is the smaller of a rising and a falling one: it peaks where they cross
    feasible = thresholds[lowest:highest + 1]
    crossing = bisect_left(feasible, True, key=lambda t: _rising_passes_falling(clients, neighbours, t, targets))
    return max(feasible[max(crossing - 1, 0):crossing + 1], key=lambda t: _margin(*bounds(clients, neighbours, t, targets),
                                                                                  targets))


def _rising_passes_falling(clients: int, neighbours: int, threshold: int, targets: Targets) -> bool:
    security, failure = bounds(clients, neighbours, threshold, targets)
    return -security - targets.security_bits >= -failure - targets.failure_bits


def bounds(clients: int, neighbours: int, threshold: int, targets: Targets) -> tuple[float, float]:
    """(log2 security bound, log2 failure bound) of a parameter choice, union-bounded over clients."""
    union = math.log2(clients)
    q = quorum(clients, threshold)
    security = _log2_sum(union + _log2_tail_at_least(neighbours, targets.corrupt_fraction, threshold - 1),
                         _log2_tail_at_least(clients, targets.corrupt_fraction, 2 * q - clients))
    failure = _log2_sum(union + _log2_tail_at_least(neighbours, targets.dropout_fraction, neighbours - threshold + 1),
                        _log2_tail_at_least(clients, targets.dropout_fraction, clients - q + 1))
    return min(security, 0.0), min(failure, 0.0)


@lru_cache(maxsize=256)
def choose_parameters(clients: int, threshold: int | None = None, neighbours: int | None = None,
                      targets: Targets = Targets()) -> GraphParameters:
    """k and t for ``clients`` clients: the user's values checked, or the defaults described above.
    Clients recompute this for every setup, so results are cached (the function is pure)."""
    if clients < 2:
        raise ParameterError(f"secure aggregation needs at least 2 clients, got {clients}")
    complete = clients - 1
    if neighbours is None:
        neighbours = complete
        for k in [*range(2, complete, 2), complete]:
            chosen = _threshold_for(clients, k, targets) if threshold is None else threshold
            if chosen is not None and minimum_threshold(k) <= chosen <= k + 1 \
                    and _meets(*bounds(clients, k, chosen, targets), targets):
                neighbours, threshold = k, chosen
                break
    elif threshold is None and 1 <= neighbours <= complete:
        threshold = _threshold_for(clients, neighbours, targets)
    if not 1 <= neighbours <= complete:
        raise ParameterError(f"neighbours must be between 1 and {complete} (complete graph) for {clients} clients, got {neighbours}")
    if neighbours != complete and neighbours % 2:
        raise ParameterError(f"neighbours must be even (a ring lattice) or {complete} (the complete graph), got {neighbours}")
    if threshold is None:
        threshold = default_threshold(neighbours)
    if not minimum_threshold(neighbours) <= threshold <= neighbours + 1:
        raise ParameterError(
            f"threshold must be between {minimum_threshold(neighbours)} (a strict majority of the {neighbours + 1} holders) "
            f"and {neighbours + 1}, got {threshold}"
        )
    security, failure = bounds(clients, neighbours, threshold, targets)
    return GraphParameters(clients, neighbours, threshold, security, failure, targets)


def _uniform_below(stream: bytes, position: int, bound: int) -> tuple[int, int]:
    """A uniform integer below ``bound`` by rejection sampling 64-bit words; returns (value, next position)."""
    limit = (1 << 64) - (1 << 64) % bound
    while True:
        if position + 8 > len(stream):
            raise RuntimeError("graph keystream exhausted")  # astronomically unlikely with the margin below
        word = int.from_bytes(stream[position : position + 8], "little")
        position += 8
        if word < limit:
            return word % bound, position


class NeighbourGraph(Mapping[int, frozenset[int]]):
    """client → its neighbours; a client asks only for its own, so neighbourhoods are built on demand."""

    def __init__(self, order: list[int], neighbours: int):
        self._order = order
        self._place = {client: place for place, client in enumerate(order)}
        self._half = neighbours // 2
        self._complete = neighbours >= len(order) - 1
        self._cache: dict[int, frozenset[int]] = {}

    def __getitem__(self, client: int) -> frozenset[int]:
        if client not in self._cache:
            place, n = self._place[client], len(self._order)  # KeyError for strangers, as a dict would
            if self._complete:
                self._cache[client] = frozenset(self._order[:place] + self._order[place + 1 :])
            else:
                steps = (s for s in range(-self._half, self._half + 1) if s)
                self._cache[client] = frozenset(self._order[(place + s) % n] for s in steps)
        return self._cache[client]

    def __iter__(self):
        return iter(sorted(self._place))

    def __len__(self) -> int:
        return len(self._order)


def neighbour_graph(ids: list[int], neighbours: int, session: bytes) -> NeighbourGraph:
    """Each client's neighbours: complete, or a ring lattice over a relabelling drawn from the session id."""
    order = sorted(ids)
    n = len(order)
    if neighbours < n - 1:
        seed = hashlib.sha256(b"secure-afl/neighbour-graph" + session).digest()
        stream = keystream(seed, bytes(16), 16 * n + 64)  # twice the words a Fisher–Yates shuffle needs on average
        position = 0
        for i in range(n - 1, 0, -1):
            j, position = _uniform_below(stream, position, i + 1)
            order[i], order[j] = order[j], order[i]
    return NeighbourGraph(order, neighbours)
