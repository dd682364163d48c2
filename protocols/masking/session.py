"""What client and server both derive from the public messages of a round: session id and graph.

The session id hashes the round setup and the full key list, so every later message, envelope
key and pairwise mask seed is bound to this round's parameters and to these fresh keys. Client
and server build the same ``Session`` from the same bytes; neither trusts the other to compute
it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from protocols.errors import ParameterError, ProtocolAbort
from protocols.graph import NeighbourGraph, minimum_threshold, neighbour_graph
from protocols.keys import KEY_BYTES
from protocols.masking.messages import KeyAdvert, KeyList, RoundSetup

DOMAIN = b"secure-afl/masking/v1"
STAGES = ("advertise", "share", "input", "unmask")  # a client that drops at a stage never sends that stage's message


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


@dataclass(frozen=True)
class Session:
    setup: RoundSetup
    adverts: dict[int, KeyAdvert]
    session_id: bytes
    graph: NeighbourGraph

    @classmethod
    def derive(cls, setup_bytes: bytes, key_list_bytes: bytes) -> Session:
        """The session of a setup and key list, from their wire bytes (the format is canonical:
        one byte string per message, so hashing the bytes received equals hashing the message)."""
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
        if len(senders) < setup.threshold:
            raise ProtocolAbort(f"only {len(senders)} clients advertised keys, fewer than the threshold {setup.threshold}")
        session_id = hashlib.sha256(DOMAIN + setup_bytes + key_list_bytes).digest()
        graph = neighbour_graph(senders, setup.neighbours, session_id)
        return cls(setup, {a.sender: a for a in key_list.adverts}, session_id, graph)

    def holders(self, client: int) -> frozenset[int]:
        """Who holds shares of ``client``'s secrets: its neighbours and itself."""
        return self.graph[client] | {client}


def check_parameters_fit(setup: RoundSetup) -> None:
    """Server-side: the same checks a client will make, so a bad configuration fails before any message."""
    try:
        check_setup(setup)
    except ProtocolAbort as exc:
        raise ParameterError(str(exc)) from exc
