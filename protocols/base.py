"""The protocol interface: a round takes each client's flat float64 vector and returns their sum.

Callers (the federation runner, benchmarks, anyone summing FL vectors) use only ``enrol`` (once per
job, optional) and ``aggregate``. Contributions are checked here, once for every protocol, before
any protocol work starts: same length, finite float64, every entry within the round's declared
public bound. A protocol either returns the exact sum (to its encoding's stated precision) or
raises. A protocol made with ``record=True`` also returns the server's view of each round
(``RoundResult.view``) for a transcript; nothing is kept between rounds, so recording never grows
with the run.

The round's name, bound and broadcast digest are the clients' terms (``protocols.terms``): secure
protocols give them to their simulated clients as what each client derived itself, and the clients
refuse a server setup that differs. Protocols whose clients sign their messages
(``RosteredProtocol``) play the job's operator in simulation: ``enrol`` draws an identity per client
and the roster, hands each simulated client its own private key and the server only the roster.
Their clients also keep a contribution ledger (``protocols.ledger``): one aggregation per statistic
and job; asking for a statistic again, under any round id, gets ``StatisticReusedError``.
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from protocols.errors import InvalidContributionError, ParameterError, RosterError
from protocols.identity import Identity, Member, Roster, canonical_json, enrol
from protocols.ledger import ContributionLedger
from protocols.terms import EMPTY_BROADCAST, RoundTerms
from protocols.transcript import RoundView


@dataclass(frozen=True)
class RoundResult:
    total: np.ndarray
    upload_bytes: dict[int, int]  # what each client sent during the round
    download_bytes: dict[int, int]  # what the protocol sent each client during the round
    included: frozenset[int] | None = None  # clients whose vectors are in the total; None: all of them
    details: dict = field(default_factory=dict)  # protocol-specific report (encoding, parameters, per-stage costs)
    view: RoundView | None = None  # what the server saw, when the protocol records


def check_vector(vector: np.ndarray, bound: float, who: str = "a vector") -> None:
    """One contribution: a 1-D float64 array, finite, every entry within ±bound (NaN fails the max)."""
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float64 or vector.ndim != 1:
        raise InvalidContributionError(f"{who}: a contribution must be a 1-D float64 numpy array")
    peak = max(float(vector.max()), -float(vector.min())) if vector.size else 0.0
    if not math.isfinite(peak):
        raise InvalidContributionError(f"{who}: the vector contains NaN or Inf")
    if peak > bound:
        raise InvalidContributionError(
            f"{who}: an entry of magnitude {peak:.6g} exceeds the declared public bound {bound:.6g}"
        )


def check_contributions(contributions: Mapping[int, np.ndarray], bound: float) -> int:
    """Validate a round's inputs; returns the common vector length."""
    if not contributions:
        raise InvalidContributionError("a round needs at least one client's vector")
    if not (np.isfinite(bound) and bound > 0):
        raise InvalidContributionError(f"the declared bound must be a positive finite number, got {bound}")
    for client, vector in contributions.items():
        check_vector(vector, bound, f"client {client}")
    lengths = {vector.shape[0] for vector in contributions.values()}
    if len(lengths) != 1:
        raise InvalidContributionError(f"clients sent vectors of different lengths {sorted(lengths)}")
    return lengths.pop()


class AggregationProtocol(ABC):
    """Sums clients' vectors; with ``record`` each result carries what the server saw."""

    name: ClassVar[str]
    secure: ClassVar[bool]  # False: the server sees individual contributions
    exact: ClassVar[bool] = True  # False: the sum carries an approximation error beyond the fixed-point bound
    leak: ClassVar[str | None] = None  # how a server learns more than the sum despite ``secure``; None: no known way
    stages: ClassVar[tuple[str, ...]] = ("input",)  # where a client can drop out of a round

    def __init__(self, record: bool = False):
        self.record = record

    def prepare(self, clients: int, bound: float) -> None:
        """Refuse, before any data exists, a round shape this protocol cannot run (encoding, parameters)."""

    def adopt(self, roster: Roster, clients: Iterable[int], job: Mapping | None = None) -> None:
        """Take a deployed job's roster; protocols without client identities need none."""

    def enrol(self, clients: Iterable[int], job: Mapping | None = None) -> None:
        """Admit the job's clients before its first round (``job``: the application's public configuration,
        recorded in the roster). Protocols without client identities have nothing to do."""

    def aggregate(self, round_id: str, contributions: Mapping[int, np.ndarray], bound: float,
                  drop: Mapping[str, Iterable[int]] | None = None, broadcast_digest: bytes | None = None) -> RoundResult:
        """The sum of the contributions. ``drop`` names clients that leave the round at a stage (a simulated
        dropout, on top of any the protocol draws itself); their vectors are not in the sum.
        ``broadcast_digest`` (``protocols.terms.broadcast_digest``) names the model / state the server
        broadcast with the round; secure protocols bind it into the session."""
        length = check_contributions(contributions, bound)
        terms = RoundTerms(round_id, float(bound), EMPTY_BROADCAST if broadcast_digest is None else broadcast_digest)
        return self._aggregate(terms, dict(contributions), length, self._check_drop(drop, contributions))

    def _check_drop(self, drop, contributions) -> dict[str, frozenset[int]]:
        drop = {stage: frozenset(int(c) for c in ids) for stage, ids in (drop or {}).items()}
        unknown = set(drop) - set(self.stages)
        if unknown:
            raise ParameterError(f"protocol {self.name!r} has no stage {sorted(unknown)}; its stages are {', '.join(self.stages)}")
        leaving = [c for ids in drop.values() for c in ids]
        strangers = set(leaving) - set(contributions)
        if strangers:
            raise ParameterError(f"clients {sorted(strangers)} cannot drop: they are not in the round")
        if len(set(leaving)) != len(leaving):
            raise ParameterError("a client can drop out of a round only once")
        return drop

    @abstractmethod
    def _aggregate(self, terms: RoundTerms, contributions: dict[int, np.ndarray], length: int,
                   drop: dict[str, frozenset[int]]) -> RoundResult:
        """Run the round on validated inputs."""


class RosteredProtocol(AggregationProtocol):
    """A protocol whose clients sign every message against a roster; in simulation the object is the operator.

    The roster is drawn once per protocol object (one object is one job): by ``enrol`` or, failing
    that, for the clients of the first round. A later round with a client outside it is refused, as
    a deployment would refuse a stranger.

    Each simulated client keeps a contribution ledger (protocols/ledger.py) and refuses to release a
    statistic twice in the job, so no caller can aggregate a statistic again over other clients.
    The ledgers live in ``ledger_dir``, by default a temporary directory of this object's own (one
    per job, so honest runs never collide); a fixed directory lets a test restart clients on the
    same record. ``ledger=False`` gives the clients no ledger: the clients before the defence, only
    to demonstrate the difference attack.
    """

    def __init__(self, record: bool = False, ledger: bool = True, ledger_dir: str | Path | None = None):
        super().__init__(record)
        self.roster: Roster | None = None
        self._identities: dict[int, Identity] = {}
        self.ledger = ledger
        self.ledger_dir = ledger_dir
        self._scratch: str | None = None  # the default ledger directory, removed with this object

    @abstractmethod
    def options(self, clients: list[int]) -> dict:
        """The protocol's public options for a job of these clients (JSON), as the roster records them."""

    def key_holder(self, clients: list[int]) -> int | None:
        """The client that holds a decryption key, if the protocol has one."""
        return None

    def enrol(self, clients: Iterable[int], job: Mapping | None = None) -> None:
        ids = sorted({int(c) for c in clients})
        if self.roster is not None:
            strangers = set(ids) - set(self.roster.clients)
            if strangers:
                raise ParameterError(f"clients {sorted(strangers)} are not in this job's roster; enrol every client "
                                     "of the job before its first round")
            return
        if not ids:
            raise ParameterError("a job needs at least one client")
        config = {"protocol": self.options(ids), "job": dict(job or {})}
        self.roster, self._identities = enrol(f"{self.name}-{secrets.token_hex(8)}", ids, config, self.key_holder(ids))

    def adopt(self, roster: Roster, clients: Iterable[int], job: Mapping | None = None) -> None:
        """Take the operator's roster of a deployed job (whose clients hold their own identities) instead of
        enrolling; refused unless it lists exactly these clients under this protocol's options and ``job``."""
        ids = sorted({int(c) for c in clients})
        config = {"protocol": self.options(ids), "job": dict(job or {})}
        if sorted(roster.clients) != ids or canonical_json(dict(roster.config)) != canonical_json(config):
            raise RosterError(f"roster {roster.job_id!r} is not this job's: it must list clients {ids} under the job's "
                              "protocol options and public configuration; issue the roster from this job's settings")
        if roster.key_holder != self.key_holder(ids):
            raise RosterError(f"roster {roster.job_id!r} names key holder {roster.key_holder}, the job "
                              f"{self.key_holder(ids)}")
        self.roster = roster

    def member(self, client: int) -> Member:
        """What simulated client ``client`` holds: its own private identity and the roster."""
        return Member(self._identities[client], self.roster)

    def ledger_of(self, client: int) -> ContributionLedger | None:
        """Simulated client ``client``'s contribution ledger; None when the job's clients keep none."""
        if not self.ledger:
            return None
        if self.ledger_dir is None and self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="secure-afl-ledgers-")
            weakref.finalize(self, shutil.rmtree, self._scratch, ignore_errors=True)
        return ContributionLedger.in_directory(self.ledger_dir or self._scratch, client)

    def _roster_for(self, clients) -> Roster:
        self.enrol(clients)
        return self.roster
