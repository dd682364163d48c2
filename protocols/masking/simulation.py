"""The masking protocol in one process: n client state machines and one server, bytes between them.

This is the same code a deployment runs (the state machines exchange serialized messages here
exactly as they would over a transport); the simulation only decides who drops at which stage,
measures the bytes each side sends and the time each side spends, and records the server's view.
It also plays the job's operator: each simulated client gets its own private identity and the
roster, the server only the roster, and every client gets the round's terms as its own
application would derive them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocols.base import RosteredProtocol, RoundResult
from protocols.dropouts import check_dropout_fractions, check_stages, draw_dropouts
from protocols.encoding import FixedPoint
from protocols.graph import GraphParameters, Targets, TargetsNotMetWarning
from protocols.identity import Member, enrol
from protocols.ledger import ContributionLedger
from protocols.masking.client import MaskingClient
from protocols.masking.server import MaskingServer
from protocols.masking.session import STAGES, MaskingOptions
from protocols.minimum import require_min_clients
from protocols.terms import RoundTerms
from protocols.transcript import RoundView


@dataclass
class StageCost:
    upload: dict[int, int] = field(default_factory=dict)
    download: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0

    def summary(self) -> dict:
        def stats(values):
            values = list(values)
            return {"max": max(values), "mean": float(np.mean(values))} if values else {"max": 0, "mean": 0.0}

        return {
            "upload_bytes": stats(self.upload.values()),
            "download_bytes": stats(self.download.values()),
            "client_seconds": stats(self.client_seconds.values()),
            "server_seconds": self.server_seconds,
        }


@dataclass
class MaskedRound:
    words: np.ndarray  # the exact sum of the included clients' encodings, mod 2^64
    encoding: FixedPoint
    parameters: GraphParameters
    included: frozenset[int]
    dropped: dict[str, frozenset[int]]
    costs: dict[str, StageCost]
    server: MaskingServer

    @property
    def total(self) -> np.ndarray:
        return self.encoding.decode(self.words)


def enrol_for(clients, encoding: FixedPoint, parameters: GraphParameters) -> dict[int, Member]:
    """A one-round job whose roster fixes exactly these parameters (for callers that chose them directly)."""
    options = MaskingOptions(parameters.threshold, parameters.neighbours, encoding.fraction_bits)
    roster, identities = enrol("masking-round", clients, {"protocol": options.to_json(len(clients))})
    return {c: Member(identity, roster) for c, identity in identities.items()}


def simulate_round(terms: RoundTerms | str, vectors: Mapping[int, np.ndarray], encoding: FixedPoint,
                   parameters: GraphParameters, drop: Mapping[str, Iterable[int]] | None = None,
                   members: Mapping[int, Member] | None = None,
                   ledgers: Mapping[int, ContributionLedger | None] | None = None) -> MaskedRound:
    """One round with the given clients dropping (never sending) at the given stages. ``members`` are the
    clients' identities and roster (a fresh one-round job when not given); a round id alone stands for
    terms with the encoding's bound and no broadcast. ``ledgers``: each client's contribution ledger
    (protocols/ledger.py); a client without one keeps no record (a one-round job needs none)."""
    drop = dict(drop or {})
    check_stages(drop, STAGES)
    drop = {stage: frozenset(drop.get(stage, ())) for stage in STAGES}
    terms = RoundTerms(terms, encoding.bound) if isinstance(terms, str) else terms
    members = members or enrol_for(vectors, encoding, parameters)
    length = next(iter(vectors.values())).shape[0]
    roster = next(iter(members.values())).roster
    server = MaskingServer(roster, terms, list(vectors), length, encoding, parameters)
    ledgers = ledgers or {}
    clients = {c: MaskingClient(members[c], v, terms, ledgers.get(c)) for c, v in vectors.items()}
    costs = {stage: StageCost() for stage in STAGES}

    def exchange(stage: str, inbound: Mapping[int, bytes], client_step, server_receive):
        cost = costs[stage]
        for c, message in inbound.items():
            cost.download[c] = len(message)
            if c in drop[stage]:
                continue
            start = time.perf_counter()
            reply = client_step(clients[c], message)
            cost.client_seconds[c] = time.perf_counter() - start
            cost.upload[c] = len(reply)
            start = time.perf_counter()
            server_receive(reply)
            cost.server_seconds += time.perf_counter() - start

    def server_step(stage: str, produce):
        start = time.perf_counter()
        out = produce()
        costs[stage].server_seconds += time.perf_counter() - start
        return out

    setup = server.setup_message()
    exchange("advertise", dict.fromkeys(clients, setup), MaskingClient.advertise, server.receive_advert)
    key_list = server_step("share", server.key_list)
    exchange("share", dict.fromkeys(server.session.adverts, key_list), MaskingClient.share_keys, server.receive_shares)
    exchange("input", server_step("input", server.deliveries), MaskingClient.masked_input, server.receive_masked)
    exchange("consistency", server_step("consistency", server.consistency_requests), MaskingClient.sign_consistency,
             server.receive_signature)
    exchange("unmask", server_step("unmask", server.unmask_requests), MaskingClient.unmask, server.receive_unmask)
    words = server_step("unmask", server.finish)
    return MaskedRound(words, encoding, parameters, server.included, drop, costs, server)


class MaskingProtocol(RosteredProtocol):
    """SecAgg (complete graph) / SecAgg+ (k-regular graph) behind the common ``aggregate`` interface."""

    name = "mask"
    secure = True

    stages = STAGES

    def __init__(self, threshold: int | None = None, neighbours: int | None = None, fraction_bits: int | None = None,
                 dropout: Mapping[str, float] | None = None, dropout_seed: int = 0, targets: Targets = Targets(),
                 min_clients: int | None = None, record: bool = False, ledger: bool = True,
                 ledger_dir: str | Path | None = None):
        super().__init__(record, ledger, ledger_dir)
        self.threshold = threshold
        self.min_clients = min_clients  # m (protocols/minimum.py); None: ⌊2K/3⌋ + 1 of the K enrolled clients
        self.neighbours = neighbours
        self.fraction_bits = fraction_bits
        self.dropout = check_dropout_fractions(dropout or {}, STAGES)
        self.dropout_seed = dropout_seed
        self.targets = targets
        self.rounds_run = 0

    @property
    def _options(self) -> MaskingOptions:
        return MaskingOptions(self.threshold, self.neighbours, self.fraction_bits, self.targets, self.min_clients)

    def options(self, clients: list[int]) -> dict:
        return self._options.to_json(len(clients))

    def prepare(self, clients: int, bound: float) -> None:
        """Checks the parameters before any work, and warns once when the graph cannot meet the job's targets."""
        _, parameters = self.plan(clients, bound)
        if not parameters.meets_targets:
            warnings.warn(parameters.shortfall(), TargetsNotMetWarning, stacklevel=2)

    def plan(self, clients: int, bound: float) -> tuple[FixedPoint, GraphParameters]:
        """Encoding and graph for a round, checkable before any vector exists."""
        return self._options.plan(clients, bound)

    def _aggregate(self, terms, contributions, length, drop):
        minimum = MaskingOptions.from_roster(self._roster_for(contributions)).min_clients
        require_min_clients(len(contributions), minimum, "the round the server was asked to run")
        round_id = terms.round_id
        encoding, parameters = self.plan(len(contributions), terms.bound)
        drawn = draw_dropouts(list(contributions), self.dropout, self.dropout_seed + self.rounds_run, STAGES)
        forced = set().union(*drop.values()) if drop else set()
        drop = {stage: (drawn[stage] - forced) | drop.get(stage, frozenset()) for stage in STAGES}
        self.rounds_run += 1
        members = {c: self.member(c) for c in contributions}
        ledgers = {c: self.ledger_of(c) for c in contributions}
        result = simulate_round(terms, contributions, encoding, parameters, drop, members, ledgers)
        total = result.total
        upload = {c: sum(cost.upload.get(c, 0) for cost in result.costs.values()) for c in contributions}
        download = {c: sum(cost.download.get(c, 0) for cost in result.costs.values()) for c in contributions}
        details, view = self.report(round_id, contributions, encoding, parameters, minimum, result.dropped,
                                    result.server, total)
        details["stages"] = {stage: cost.summary() for stage, cost in result.costs.items()}
        return RoundResult(total, upload, download, included=result.included, details=details, view=view)

    def report(self, round_id: str, asked, encoding: FixedPoint, parameters: GraphParameters, minimum: int,
               dropped: Mapping[str, Iterable[int]], server: MaskingServer, total: np.ndarray) -> tuple[dict, RoundView | None]:
        """A finished round's public report and, when recording, the server's view: shared by this in-process
        simulation and a deployment's server (secure_afl/deploy), so their transcripts are the same."""
        details = {
            "fraction_bits": encoding.fraction_bits,
            "quantization_bound": encoding.sum_error_bound,
            "threshold": parameters.threshold,
            "neighbours": parameters.neighbours,
            "min_clients": minimum,
            "graph": "complete" if parameters.complete else "k-regular",
            "security_log2": _finite_or_none(parameters.security_log2),  # None: impossible under the model
            "failure_log2": _finite_or_none(parameters.failure_log2),
            "targets": {"security_bits": self.targets.security_bits, "failure_bits": self.targets.failure_bits,
                        "corrupt_fraction": self.targets.corrupt_fraction,
                        "dropout_fraction": self.targets.dropout_fraction},
            "targets_met": parameters.meets_targets,
            "dropped": {stage: sorted(ids) for stage, ids in dropped.items()},
        }
        view = None
        if self.record:
            view = RoundView(round_id, self.name, self.secure, tuple(sorted(asked)), tuple(sorted(server.included)),
                             {stage: tuple(sorted(ids)) for stage, ids in dropped.items()},
                             {stage: dict(messages) for stage, messages in server.received.items()},
                             total.copy(), dict(details))
        return details, view


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None
