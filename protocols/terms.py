"""What a client expects of a round before the server says anything: its terms.

A malicious server that may choose a round's parameters per client can send different clients
different models (so that the others' contributions are known and the "sum" is the victim's
vector) or binary-search a client's largest value with the bound it declares (a client refuses
values beyond it). So a client never takes these from the server: its application derives the
round's name, public bound and broadcast (model / state) itself from the job's public
configuration and what it received, and the client refuses any setup that differs. The
fraction bits, threshold and neighbour count follow from those and the roster's protocol options,
so the client computes them too. Everything is bound into the session id, and every peer signs
the setup it saw, so clients that were shown different setups never complete a round together.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocols.errors import InvalidContributionError

DOMAIN = b"secure-afl/broadcast/v1"


def broadcast_digest(arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """SHA-256 of a round's broadcast: every named array's name, dtype, shape and bytes, in name order.
    An empty broadcast has a digest too, so every setup names one."""
    h = hashlib.sha256(DOMAIN)
    for name in sorted(arrays or {}):
        array = np.ascontiguousarray(arrays[name])
        for part in (name.encode(), array.dtype.str.encode(), repr(tuple(array.shape)).encode()):
            h.update(len(part).to_bytes(4, "big") + part)
        h.update(array.nbytes.to_bytes(8, "big"))
        h.update(memoryview(array).cast("B"))
    return h.digest()


EMPTY_BROADCAST = broadcast_digest()


@dataclass(frozen=True)
class RoundTerms:
    """A round as the client's own side derived it: name, public bound on every entry, broadcast digest."""

    round_id: str
    bound: float
    broadcast: bytes = EMPTY_BROADCAST

    def __post_init__(self):
        if not (isinstance(self.bound, (int, float)) and math.isfinite(self.bound) and self.bound > 0):
            raise InvalidContributionError(f"the declared bound must be a positive finite number, got {self.bound}")
        if len(self.broadcast) != 32:
            raise InvalidContributionError("a broadcast digest is 32 bytes (protocols.terms.broadcast_digest)")
