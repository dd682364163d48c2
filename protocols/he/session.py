"""What every HE role derives for itself: the job's scheme, the authenticated context, a round's terms.

The job's options (scheme, capacity, limbs, fraction bits, the job's minimum aggregation size m:
the fewest clients a round and its decrypted sum may hold) come from the roster, so the scheme's
exact parameters are known to every participant before any context arrives. A public context counts only if the job's key holder signed it with
its identity key (the fingerprint of a context the server relayed authenticates nothing) and its
parameters are the scheme's (``Scheme.load_context``). A round setup is checked, by clients and
key holder alike, against the round's terms each derived itself, as in masking.

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

from protocols.encoding import FixedPoint
from protocols.errors import EncodingError, ParameterError, ProtocolAbort, RosterError, UnsafeContextError
from protocols.he.limbs import LimbPlan
from protocols.he.messages import HERoundSetup, PublicContext
from protocols.he.schemes import BFV, CKKS, Scheme, fingerprint
from protocols.identity import Roster
from protocols.minimum import check_min_clients
from protocols.terms import RoundTerms

DOMAIN = b"secure-afl/he/v2"
PROTOCOLS = {"bfv": "he-bfv", "ckks": "he-ckks", "ckks-approx": "he-ckks-approx"}  # scheme → protocol name


def make_scheme(name: str, capacity: int) -> Scheme:
    """The scheme by name; BFV's plaintext modulus depends on how many clients a sum may hold."""
    if name == "bfv":
        return BFV(clients=capacity)
    if name in ("ckks", "ckks-approx"):
        return CKKS(integer=name == "ckks")
    raise ProtocolAbort(f"unknown HE scheme {name!r}; known: {', '.join(PROTOCOLS)}")


@dataclass(frozen=True)
class HEOptions:
    """The job's HE options, as the roster records them."""

    scheme: str  # bfv, ckks or ckks-approx
    capacity: int  # clients in the job: the most one sum may hold
    limbs: int
    fraction_bits: int | None
    min_clients: int  # m (protocols/minimum.py): clients refuse smaller rounds, the key holder smaller sums

    def to_json(self) -> dict[str, Any]:
        return {"name": PROTOCOLS[self.scheme], "scheme": self.scheme, "capacity": self.capacity, "limbs": self.limbs,
                "fraction_bits": self.fraction_bits, "min_clients": self.min_clients}

    @classmethod
    def from_roster(cls, roster: Roster) -> HEOptions:
        protocol = roster.config.get("protocol")
        name = protocol.get("name") if isinstance(protocol, dict) else None
        if name not in PROTOCOLS.values():
            raise RosterError("the job's configuration does not configure a homomorphic protocol")
        options = roster.protocol_options(name)
        try:
            return cls(options["scheme"], int(options["capacity"]), int(options["limbs"]), options["fraction_bits"],
                       check_min_clients(options["min_clients"], len(roster.clients)))
        except (KeyError, TypeError, ValueError) as exc:
            raise RosterError(f"the roster's HE options are malformed: {exc}") from exc

    def make_scheme(self) -> Scheme:
        return make_scheme(self.scheme, self.capacity)

    def plan(self, clients: int, bound: float) -> tuple[FixedPoint | None, LimbPlan | None]:
        """Encoding and limbs of a round of ``clients`` clients; (None, None) for approximate CKKS."""
        scheme = self.make_scheme()
        if not scheme.exact:
            if self.fraction_bits is not None or self.limbs != 1:
                raise ParameterError("approximate CKKS encrypts the floats themselves: no fraction bits or limbs")
            return None, None
        plan = LimbPlan.for_scheme(self.limbs, scheme.limit, clients)
        return plan.encoding(clients, bound, self.fraction_bits), plan


@dataclass(frozen=True)
class PublicSession:
    """A received public context, authenticated, checked, loaded and fingerprinted once per job: what a
    client and the server hold (never a secret key: ``load_context`` refuses one)."""

    scheme: Scheme
    context: Any
    fingerprint: bytes

    @classmethod
    def load(cls, context_bytes: bytes, roster: Roster) -> PublicSession:
        message = PublicContext.from_bytes(context_bytes)
        if roster.key_holder is None or message.sender != roster.key_holder:
            raise UnsafeContextError(f"the public context comes from client {message.sender}, not from the job's key "
                                     f"holder {roster.key_holder}")
        try:
            message.verify(roster, roster.digest)
        except ProtocolAbort as exc:
            raise UnsafeContextError(f"the public context is not signed by the job's key holder (substituted?): {exc}") from exc
        options = HEOptions.from_roster(roster)
        if (message.scheme, message.capacity) != (options.scheme, options.capacity):
            raise UnsafeContextError(f"the public context is for {message.scheme!r} with capacity {message.capacity}; "
                                     f"the job runs {options.scheme!r} with capacity {options.capacity}")
        scheme = options.make_scheme()
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


def check_terms(setup: HERoundSetup, roster: Roster, terms: RoundTerms, scheme: Scheme, context_fingerprint: bytes
                ) -> tuple[FixedPoint | None, LimbPlan | None]:
    """A client's or key holder's checks of the round setup against what it derives itself; any failure
    refuses before encryption or decryption. Returns the round's encoding and limb plan."""
    if setup.roster != roster.digest or setup.config != roster.config_sha256:
        raise ProtocolAbort("the round setup names another job roster or configuration than the operator's")
    if setup.scheme != scheme.label:
        raise ProtocolAbort(f"the round setup is for scheme {setup.scheme!r}, the session uses {scheme.label!r}")
    if setup.fingerprint != context_fingerprint:
        raise ProtocolAbort("the round setup names another public context (fingerprint mismatch)")
    if len(set(setup.participants)) != len(setup.participants) or not setup.participants:
        raise ProtocolAbort("the round setup lists no clients or a client twice")
    strangers = set(setup.participants) - set(roster.clients)
    if strangers:
        raise ProtocolAbort(f"the round setup lists clients {sorted(strangers)} that are not in the job's roster (Sybils?)")
    if setup.length < 1:
        raise ProtocolAbort("the round setup announces an empty vector")
    if (setup.round_id, setup.broadcast) != (terms.round_id, terms.broadcast):
        raise ProtocolAbort("the round setup names another round or broadcast (model / state) than this client's")
    if not setup.bound == terms.bound:  # NaN compares unequal: refused here, typed
        raise ProtocolAbort(f"the round setup's bound {setup.bound!r} is not the job's public bound {terms.bound!r}")
    try:
        encoding, plan = HEOptions.from_roster(roster).plan(len(setup.participants), terms.bound)
    except (EncodingError, ParameterError) as exc:
        raise ProtocolAbort(f"the job's configuration cannot run a round of {len(setup.participants)} clients: {exc}") from exc
    expected = (encoding.fraction_bits if encoding else 0, plan.limbs if plan else 1, plan.digit_bits if plan else 0)
    if (setup.fraction_bits, setup.limbs, setup.digit_bits) != expected:
        raise ProtocolAbort(f"the round setup's encoding (fraction bits, limbs, digit bits) = "
                            f"{(setup.fraction_bits, setup.limbs, setup.digit_bits)} is not the job's {expected}")
    return encoding, plan
