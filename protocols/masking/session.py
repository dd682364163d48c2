"""What client and server both derive from the public messages of a round: terms, session id and graph.

A client checks the setup against what it derives itself (``check_terms``): the roster and
configuration it got from the operator, the round's name, bound and broadcast from its own
application, and the fraction bits, threshold and neighbour count that follow from them and the
roster's protocol options. The setup id (a hash of the setup bytes) is what key advertisements
are signed under, so clients shown different setups cannot verify each other's keys. The session
id hashes the setup and the full key list, so every later message, envelope key and pairwise mask
seed is bound to this round's parameters and these fresh keys. Client and server build the same
``Session`` from the same bytes; neither trusts the other to compute it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from protocols.encoding import FixedPoint
from protocols.errors import EncodingError, ParameterError, ProtocolAbort, RosterError, TooFewClientsError
from protocols.graph import GraphParameters, NeighbourGraph, Targets, choose_parameters, minimum_threshold, neighbour_graph
from protocols.graph import quorum as certificate_quorum
from protocols.identity import Roster
from protocols.keys import KEY_BYTES
from protocols.masking.messages import KeyAdvert, KeyList, RoundSetup
from protocols.minimum import check_min_clients, default_min_clients
from protocols.terms import RoundTerms

DOMAIN = b"secure-afl/masking/v2"
NAME = "mask"
STAGES = ("advertise", "share", "input", "consistency", "unmask")  # a client that drops at a stage never sends that stage's message


@dataclass(frozen=True)
class MaskingOptions:
    """The job's masking options, as the roster records them (None: the default for the round's size).

    ``min_clients`` (m, protocols/minimum.py) is never left to the round: a roster records the number,
    resolved by ``to_json`` against the job's clients when not given."""

    threshold: int | None = None
    neighbours: int | None = None
    fraction_bits: int | None = None
    targets: Targets = Targets()
    min_clients: int | None = None

    def to_json(self, clients: int) -> dict[str, Any]:
        """The roster's record for a job of ``clients`` clients, every round of which asks all of them unless
        ``min_clients`` says otherwise."""
        t = self.targets
        minimum = default_min_clients(clients) if self.min_clients is None else check_min_clients(self.min_clients, clients)
        return {"name": NAME, "threshold": self.threshold, "neighbours": self.neighbours,
                "fraction_bits": self.fraction_bits, "min_clients": minimum,
                "targets": {"corrupt_fraction": t.corrupt_fraction, "dropout_fraction": t.dropout_fraction,
                            "security_bits": t.security_bits, "failure_bits": t.failure_bits}}

    @classmethod
    def from_roster(cls, roster: Roster) -> MaskingOptions:
        options = roster.protocol_options(NAME)
        try:
            return cls(options["threshold"], options["neighbours"], options["fraction_bits"],
                       Targets(**options["targets"]), check_min_clients(options["min_clients"], len(roster.clients)))
        except (KeyError, TypeError, ParameterError) as exc:
            raise RosterError(f"the roster's masking options are malformed: {exc}") from exc

    def plan(self, clients: int, bound: float) -> tuple[FixedPoint, GraphParameters]:
        """Encoding and graph for a round of ``clients`` clients bounded by ``bound``."""
        return FixedPoint.for_round(clients, bound, self.fraction_bits), \
            choose_parameters(clients, self.threshold, self.neighbours, self.targets)


def setup_id(setup_bytes: bytes) -> bytes:
    """What key advertisements are signed under."""
    return hashlib.sha256(DOMAIN + b"/setup" + setup_bytes).digest()


def check_setup(setup: RoundSetup) -> None:
    """Parameters any honest round has; a client refuses the others before sending anything."""
    participants = setup.participants
    if len(set(participants)) != len(participants):
        raise ProtocolAbort("the round setup lists a client twice")
    if len(participants) < 2:
        raise ProtocolAbort("the round setup lists fewer than 2 clients")
    if not 1 <= setup.neighbours <= len(participants) - 1:
        raise ProtocolAbort(f"the round setup asks for {setup.neighbours} neighbours among {len(participants)} clients")
    if setup.threshold < minimum_threshold(setup.neighbours) or setup.threshold > setup.neighbours + 1:
        raise ProtocolAbort(
            f"the round setup's threshold {setup.threshold} is unsafe for {setup.neighbours} neighbours "
            f"(at least {minimum_threshold(setup.neighbours)} is needed)"
        )
    if setup.length < 1:
        raise ProtocolAbort("the round setup announces an empty vector")
    if not (math.isfinite(setup.bound) and setup.bound > 0):
        raise ProtocolAbort(f"the round setup's bound {setup.bound!r} is not a positive finite number")


def check_terms(setup: RoundSetup, roster: Roster, terms: RoundTerms) -> FixedPoint:
    """A client's refusal of any setup that differs from what it derives itself; returns its encoding."""
    check_setup(setup)
    if setup.roster != roster.digest or setup.config != roster.config_sha256:
        raise ProtocolAbort("the round setup names another job roster or configuration than the operator's")
    strangers = set(setup.participants) - set(roster.clients)
    if strangers:
        raise ProtocolAbort(f"the round setup lists clients {sorted(strangers)} that are not in the job's roster (Sybils?)")
    if setup.round_id != terms.round_id:
        raise ProtocolAbort(f"the round setup is for round {setup.round_id!r}, this client is in round {terms.round_id!r}")
    if setup.broadcast != terms.broadcast:
        raise ProtocolAbort("the round setup names a broadcast (model / state) other than the one this client received")
    if setup.bound != terms.bound:
        raise ProtocolAbort(f"the round setup's bound {setup.bound!r} is not the job's public bound {terms.bound!r} "
                            "for this round")
    try:
        encoding, parameters = MaskingOptions.from_roster(roster).plan(len(setup.participants), terms.bound)
    except (EncodingError, ParameterError) as exc:
        raise ProtocolAbort(f"the job's configuration cannot run a round of {len(setup.participants)} clients: {exc}") from exc
    if setup.fraction_bits != encoding.fraction_bits:
        raise ProtocolAbort(f"the round setup's {setup.fraction_bits} fraction bits are not the job's "
                            f"{encoding.fraction_bits} for this bound and client count")
    if (setup.neighbours, setup.threshold) != (parameters.neighbours, parameters.threshold):
        raise ProtocolAbort(f"the round setup's graph (k = {setup.neighbours}, t = {setup.threshold}) is not the job's "
                            f"(k = {parameters.neighbours}, t = {parameters.threshold})")
    return encoding


@dataclass(frozen=True)
class Session:
    setup: RoundSetup
    adverts: dict[int, KeyAdvert]
    session_id: bytes
    setup_id: bytes
    graph: NeighbourGraph
    quorum: int

    @classmethod
    def derive(cls, setup_bytes: bytes, key_list_bytes: bytes, min_clients: int) -> Session:
        """The session of a setup and key list, from their wire bytes (the format is canonical:
        one byte string per message, so hashing the bytes received equals hashing the message).
        ``min_clients`` is the job's m from the roster: no certificate quorum is below it."""
        setup, key_list = RoundSetup.from_bytes(setup_bytes), KeyList.from_bytes(key_list_bytes)
        if key_list.round_id != setup.round_id:
            raise ProtocolAbort(f"the key list is for round {key_list.round_id!r}, not {setup.round_id!r}")
        senders = [a.sender for a in key_list.adverts]
        if senders != sorted(set(senders)):
            raise ProtocolAbort("the key list is not sorted by client or lists a client twice")
        unknown = set(senders) - set(setup.participants)
        if unknown:
            raise ProtocolAbort(f"the key list names clients outside the round: {sorted(unknown)}")
        keys = [k for a in key_list.adverts for k in (a.mask_key, a.share_key)]
        if any(len(k) != KEY_BYTES for k in keys):
            raise ProtocolAbort("the key list holds a public key of the wrong size")
        if len(set(keys)) != len(keys):
            raise ProtocolAbort("the key list repeats a public key")
        quorum = certificate_quorum(len(setup.participants), setup.threshold, min_clients)
        if len(senders) < quorum:
            raise TooFewClientsError(f"only {len(senders)} clients advertised keys; {quorum} must sign the survivor sets "
                                "before anything can be unmasked")
        session_id = hashlib.sha256(DOMAIN + setup_bytes + key_list_bytes).digest()
        graph = neighbour_graph(senders, setup.neighbours, session_id)
        return cls(setup, {a.sender: a for a in key_list.adverts}, session_id, setup_id(setup_bytes), graph, quorum)

    def holders(self, client: int) -> frozenset[int]:
        """Who holds shares of ``client``'s secrets: its neighbours and itself."""
        return self.graph[client] | {client}

    def verify_adverts(self, roster: Roster, clients) -> None:
        """Each named client's key advertisement is signed by it, for exactly this setup."""
        for client in clients:
            self.adverts[client].verify(roster, self.setup_id)


def check_parameters_fit(setup: RoundSetup) -> None:
    """Server-side: the same checks a client will make, so a bad configuration fails before any message."""
    try:
        check_setup(setup)
    except ProtocolAbort as exc:
        raise ParameterError(str(exc)) from exc

