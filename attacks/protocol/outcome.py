"""What a protocol attack achieved: the victim's rebuilt input (or nothing), and every refusal it met."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protocols.errors import ProtocolError


@dataclass
class Outcome:
    attack: str  # which finding / attack
    threat_model: str  # who the attacker is: active server, colluding clients, Sybils, ...
    parameters: dict  # n, k, t, q, colluders, ... the numbers the attack's success depends on
    recovered: np.ndarray | None = None  # the victim's fixed-point words (or the value learned); None: nothing
    refusals: dict[int, ProtocolError] = field(default_factory=dict)  # client → its typed refusal
    notes: dict = field(default_factory=dict)  # anything else the attacker observed (e.g. the answers of an oracle)

    @property
    def leaked(self) -> bool:
        return self.recovered is not None

    def refused(self, client: int) -> bool:
        return client in self.refusals


def minus_known(total: np.ndarray | None, included, victim: int, known: dict[int, np.ndarray]) -> np.ndarray | None:
    """The victim's words from a sum (uint64 words) that holds exactly the victim and clients whose words the
    attacker knows (colluders, Sybils, clients sent a crafted model): the sum minus theirs. None when there is
    no sum or it holds anyone else."""
    if total is None or set(included) != {victim, *known}:
        return None
    recovered = np.array(total, dtype=np.uint64)
    for words in known.values():
        recovered -= words
    return recovered


def ask(clients, method: str, messages: dict[int, bytes]) -> tuple[dict[int, bytes], dict[int, ProtocolError]]:
    """Send each client its message; collect replies and typed refusals (anything else is a bug: it propagates)."""
    replies, refusals = {}, {}
    for client, message in messages.items():
        try:
            replies[client] = getattr(clients[client], method)(message)
        except ProtocolError as exc:
            refusals[client] = exc
    return replies, refusals
