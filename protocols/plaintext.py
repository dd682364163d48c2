"""Plaintext aggregation: every client sends its vector in the clear and the server adds them.

No privacy at all: the server (and anyone on the wire) sees each client's statistics. It is the
reference the secure protocols must reproduce, and the baseline the attacks show leaking.
"""

from __future__ import annotations

import numpy as np

from protocols.base import AggregationProtocol, RoundResult
from protocols.transcript import RoundView


class PlaintextProtocol(AggregationProtocol):
    name = "plaintext"
    secure = False

    def _aggregate(self, round_id, contributions, bound, length):
        total = np.zeros(length, dtype=np.float64)
        for client in sorted(contributions):  # a fixed order makes the float sum reproducible
            total += contributions[client]
        if self.keep_transcript:
            received = {client: vector.copy() for client, vector in contributions.items()}
            self.transcript.record(RoundView(round_id, self.name, received, total.copy()))
        upload = {client: int(vector.nbytes) for client, vector in contributions.items()}
        return RoundResult(total, upload, {client: 0 for client in contributions})
