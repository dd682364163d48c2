"""What every HE role derives from the public round setup: session id, limb plan, packing.

Values are packed densely: each limb's L digits, then one canary slot, fill ⌈(L+1)/slots⌉
ciphertexts. Every client puts 1 in the canary slot, so the decrypted canary of a correct sum
equals the number of clients it covers; a sum decrypted under the wrong key, or corrupted,
fails that check (for BFV with probability 1 − 1/t).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.errors import ProtocolAbort
from protocols.he.limbs import LimbPlan
from protocols.he.messages import HERoundSetup, PublicContext
from protocols.he.schemes import BFV, CKKS, Scheme, fingerprint

DOMAIN = b"secure-afl/he/v1"
SCHEMES = ("bfv", "ckks", "ckks-approx")


def make_scheme(name: str, capacity: int) -> Scheme:
    """The scheme by name; BFV's plaintext modulus depends on how many clients a sum may hold."""
    if name == "bfv":
        return BFV(clients=capacity)
    if name in ("ckks", "ckks-approx"):
        return CKKS(integer=name == "ckks")
    raise ProtocolAbort(f"unknown HE scheme {name!r}; known: {', '.join(SCHEMES)}")


@dataclass(frozen=True)
class PublicSession:
    """A received public context, parsed, loaded and fingerprinted once per session: what a client
    and the server hold (never a secret key: ``load_context`` refuses one)."""

    scheme: Scheme
    context: Any
    fingerprint: bytes

    @classmethod
    def load(cls, context_bytes: bytes) -> PublicSession:
        message = PublicContext.from_bytes(context_bytes)
        scheme = make_scheme(message.scheme, message.capacity)
        return cls(scheme, scheme.load_context(message.context), fingerprint(message.context))


def session_id(setup_bytes: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + setup_bytes).digest()


def chunk_count(length: int, slots: int) -> int:
    return math.ceil((length + 1) / slots)


def pack(limbs: list[np.ndarray], slots: int) -> list[np.ndarray]:
    """Per limb: the values and a canary 1, cut into slot-sized chunks (limb-major order)."""
    chunks = []
    for values in limbs:
        padded = np.concatenate([values, np.ones(1, dtype=values.dtype)])
        chunks.extend(padded[i : i + slots] for i in range(0, padded.shape[0], slots))
    return chunks


def unpack(decrypted: list[np.ndarray], limbs: int, length: int) -> tuple[list[np.ndarray], list]:
    """Decrypted chunks → per-limb sums of length L and the per-limb canary sums."""
    per_limb = len(decrypted) // limbs
    sums, canaries = [], []
    for j in range(limbs):
        flat = np.concatenate(decrypted[j * per_limb : (j + 1) * per_limb])
        sums.append(flat[:length])
        canaries.append(flat[length])
    return sums, canaries


def plan_for(setup: HERoundSetup, scheme: Scheme) -> LimbPlan | None:
    """The limb plan a setup announces, checked against the scheme (None for approximate CKKS)."""
    if not scheme.exact:
        return None
    return LimbPlan.for_scheme(setup.limbs, scheme.limit, len(setup.participants))


def check_setup(setup: HERoundSetup, scheme: Scheme, fingerprint: bytes) -> LimbPlan | None:
    """A client's or key holder's checks of the round setup; any failure aborts before encryption."""
    if setup.scheme != scheme.label:
        raise ProtocolAbort(f"the round setup is for scheme {setup.scheme!r}, the session uses {scheme.label!r}")
    if setup.fingerprint != fingerprint:
        raise ProtocolAbort("the round setup names another public context (fingerprint mismatch)")
    if len(set(setup.participants)) != len(setup.participants) or not setup.participants:
        raise ProtocolAbort("the round setup lists no clients or a client twice")
    if setup.length < 1:
        raise ProtocolAbort("the round setup announces an empty vector")
    plan = plan_for(setup, scheme)
    if plan is None:
        return None
    if setup.digit_bits != plan.digit_bits:
        raise ProtocolAbort(f"the round setup's digit width {setup.digit_bits} differs from the scheme's {plan.digit_bits}")
    largest = math.floor(setup.bound * 2.0**setup.fraction_bits + 0.5)
    if not plan.carries(len(setup.participants), largest):
        raise ProtocolAbort("the round setup's encoding would overflow the scheme's exact range")
    return plan
