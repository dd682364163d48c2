"""What the server saw: one record per aggregation round, for the attacks to consume.

A protocol appends the messages the server received from each client (decoded where the server
can decode them) and the sum it computed. Under plaintext aggregation that is every client's
vector; under a secure protocol it is ciphertext or masked words plus the sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RoundView:
    round_id: str
    protocol: str
    received: dict[int, np.ndarray]  # client id → the vector the server received from it (masked, for masking)
    total: np.ndarray
    messages: dict[str, dict[int, bytes]] = field(default_factory=dict)  # stage → client → raw wire message


@dataclass
class Transcript:
    rounds: list[RoundView] = field(default_factory=list)

    def record(self, view: RoundView) -> None:
        self.rounds.append(view)

    def round(self, round_id: str) -> RoundView:
        for view in self.rounds:
            if view.round_id == round_id:
                return view
        raise KeyError(f"no round {round_id!r} in this transcript")
