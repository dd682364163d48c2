"""Plaintext aggregation: every client sends its vector in the clear and the server adds them.

No privacy at all: the server (and anyone on the wire) sees each client's statistics. It is the
reference the secure protocols must reproduce, and the baseline the attacks show leaking. Its one
message, ``PlaintextInput``, is the vector's float64 bits in the common wire format; it is built
only when the round is recorded (the in-process sum needs no serialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.base import AggregationProtocol, RoundResult
from protocols.transcript import RoundView
from protocols.wire import Reader, Writer


@dataclass(frozen=True)
class PlaintextInput:
    round_id: str
    sender: int
    values: np.ndarray  # float64
    KIND = 9

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).text(self.round_id).u32(self.sender).words(self.values.view(np.uint64)).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PlaintextInput:
        r = Reader(data, cls.KIND, "plaintext input")
        msg = cls(r.text(), r.u32(), r.words().view(np.float64))
        r.end()
        return msg


class PlaintextProtocol(AggregationProtocol):
    name = "plaintext"
    secure = False

    def _aggregate(self, terms, contributions, length, drop):
        round_id = terms.round_id
        dropped = drop.get("input", frozenset())
        included = sorted(set(contributions) - dropped)
        total = np.zeros(length, dtype=np.float64)
        for client in included:  # a fixed order makes the float sum reproducible
            total += contributions[client]
        upload = {client: int(contributions[client].nbytes) if client in included else 0 for client in contributions}
        view = None
        if self.record:
            messages = {"input": {c: PlaintextInput(round_id, c, contributions[c]).to_bytes() for c in included}}
            view = RoundView(round_id, self.name, self.secure, tuple(sorted(contributions)), tuple(included),
                             {"input": tuple(sorted(dropped))}, messages, total.copy())
        return RoundResult(total, upload, {client: 0 for client in contributions}, included=frozenset(included),
                           view=view)
