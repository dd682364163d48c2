"""The three roles of homomorphic aggregation as state machines over wire messages.

Key holder: one designated client. It alone creates the secret key; it publishes the public
context once per session and decrypts one aggregate per round, after checking that the aggregate
covers enough clients and that its canary counts them. Client: checks the setup against the
context it was given, encodes, splits into limbs, encrypts. Server: holds only the public context
(asserted), checks every message's session and fingerprint, adds ciphertexts and nothing else,
and receives the decoded sum from the key holder.
"""

from __future__ import annotations

import os

import numpy as np

from protocols.base import check_vector
from protocols.encoding import FixedPoint
from protocols.errors import MalformedMessageError, ProtocolAbort, ProtocolError, ThresholdError
from protocols.he.limbs import LimbPlan
from protocols.he.messages import DecryptedSum, EncryptedInput, EncryptedSum, HERoundSetup, PublicContext
from protocols.he.schemes import Scheme, fingerprint
from protocols.he.session import PublicSession, chunk_count, check_setup, pack, session_id, unpack

NONCE_BYTES = 16


class AddOnly:
    """A ciphertext in the server's hands: it may be added to another, never multiplied.

    A plaintext-scalar multiply on the server silently corrupted CKKS values above ≈2^19 with the
    common [60, 40, 40] parameters, and no aggregation needs one.
    """

    def __init__(self, vector):
        self._vector = vector

    @property
    def vector(self):
        return self._vector

    def __add__(self, other: AddOnly) -> AddOnly:
        return AddOnly(self._vector + other._vector)

    def __mul__(self, other):
        raise ProtocolError("the server only adds ciphertexts; multiplication is refused")

    __rmul__ = __mul__
    __matmul__ = __mul__
    __pow__ = __mul__


class HEKeyHolder:
    def __init__(self, scheme: Scheme, min_clients: int = 2):
        self.scheme = scheme
        self.min_clients = min_clients
        self._context = scheme.secret_context()
        public = scheme.public_bytes(self._context)
        self.public_context = PublicContext(scheme.label, scheme.capacity, public).to_bytes()
        self.fingerprint = fingerprint(public)
        self._decrypted: set[bytes] = set()

    def decrypt(self, setup_bytes: bytes, sum_bytes: bytes) -> bytes:
        setup = HERoundSetup.from_bytes(setup_bytes)
        plan = check_setup(setup, self.scheme, self.fingerprint)
        session = session_id(setup_bytes)
        message = EncryptedSum.from_bytes(sum_bytes)
        if message.session != session:
            raise ProtocolAbort("an encrypted sum for another session or round was refused")
        if message.fingerprint != self.fingerprint:
            raise ProtocolAbort("the encrypted sum names another public context (fingerprint mismatch)")
        if session in self._decrypted:
            raise ProtocolAbort("a second decryption in the same round was refused")
        included = set(message.included)
        if len(included) != len(message.included) or not included <= set(setup.participants):
            raise ProtocolAbort("the encrypted sum lists unknown clients or a client twice")
        if len(included) < self.min_clients:
            raise ProtocolAbort(f"the sum covers {len(included)} clients; at least {self.min_clients} are required")
        limbs = plan.limbs if plan else 1
        if len(message.ciphertexts) != limbs * chunk_count(setup.length, self.scheme.slots):
            raise ProtocolAbort("the encrypted sum has the wrong number of ciphertexts")
        self._decrypted.add(session)
        decrypted = [self.scheme.decrypt(self.scheme.load(self._context, c)) for c in message.ciphertexts]
        sums, canaries = unpack(decrypted, limbs, setup.length)
        if any(abs(float(c) - len(included)) > 0.5 for c in canaries):
            raise ProtocolAbort(
                "the decrypted sum fails its canary check: wrong key, corrupted ciphertext, "
                "or not the sum of the clients it lists"
            )
        words = plan.join(sums) if plan else sums[0].astype(np.float64).view(np.uint64)
        return DecryptedSum(session, words).to_bytes()


class HEClient:
    def __init__(self, client_id: int, vector: np.ndarray, public: PublicSession):
        self.id = client_id
        self._vector = vector
        self._public = public  # loaded once per session, shared by the rounds

    def encrypt(self, setup_bytes: bytes) -> bytes:
        public = self._public
        setup = HERoundSetup.from_bytes(setup_bytes)
        plan = check_setup(setup, public.scheme, public.fingerprint)
        if self.id not in setup.participants:
            raise ProtocolAbort(f"client {self.id} is not among the round's participants")
        if setup.length != self._vector.shape[0]:
            raise ProtocolAbort(f"the round expects {setup.length} values, this client holds {self._vector.shape[0]}")
        if plan is None:  # approximate CKKS: the floats themselves
            check_vector(self._vector, setup.bound, "the vector to encrypt")
            limbs = [self._vector]
        else:
            encoding = FixedPoint(setup.fraction_bits, setup.bound, len(setup.participants))
            limbs = plan.split(encoding.encode(self._vector))  # refuses NaN/Inf/out-of-bound before encrypting
        ciphertexts = tuple(public.scheme.encrypt(public.context, chunk) for chunk in pack(limbs, public.scheme.slots))
        return EncryptedInput(session_id(setup_bytes), self.id, public.fingerprint, ciphertexts).to_bytes()


class HEServer:
    def __init__(self, scheme: Scheme):
        self.scheme = scheme
        self._public: PublicSession | None = None
        self.received: dict[str, dict[int, bytes]] = {"context": {}, "input": {}, "decrypted": {}}
        self.session = b""
        self._setup: HERoundSetup | None = None
        self._expected = 0
        self._total: list[AddOnly] | None = None
        self._included: list[int] = []

    @property
    def fingerprint(self) -> bytes:
        return self._public.fingerprint if self._public else b""

    def receive_context(self, context_bytes: bytes, holder: int) -> None:
        public = PublicSession.load(context_bytes)  # refuses a context with a secret key
        if public.scheme.label != self.scheme.label:
            raise ProtocolError(f"the key holder's context is for {public.scheme.label!r}, "
                                f"the session uses {self.scheme.label!r}")
        assert not public.context.has_secret_key()
        self._public = public
        self.received["context"][holder] = context_bytes

    def setup(self, round_id: str, participants: list[int], length: int, bound: float,
              encoding: FixedPoint | None, plan: LimbPlan | None) -> bytes:
        self._setup = HERoundSetup(
            round_id, self.scheme.label, self.fingerprint,
            os.urandom(NONCE_BYTES), length, bound, encoding.fraction_bits if encoding else 0,
            plan.limbs if plan else 1, plan.digit_bits if plan else 0, tuple(sorted(participants)),
        )
        message = self._setup.to_bytes()
        self.session = session_id(message)
        self._expected = (plan.limbs if plan else 1) * chunk_count(length, self.scheme.slots)
        self._total: list[AddOnly] | None = None
        self._included: list[int] = []
        self.received["input"], self.received["decrypted"] = {}, {}
        return message

    def receive_input(self, data: bytes) -> None:
        message = EncryptedInput.from_bytes(data)
        if self._setup is None or message.session != self.session:
            raise ProtocolError("an encrypted input for another session or round was refused")
        if message.sender not in self._setup.participants:
            raise ProtocolError(f"an encrypted input from client {message.sender}, which is not in the round")
        if message.sender in self.received["input"]:
            raise ProtocolError(f"a second encrypted input from client {message.sender} was refused")
        if message.fingerprint != self.fingerprint:
            raise ProtocolError(f"client {message.sender} encrypted under another public context (fingerprint mismatch)")
        if len(message.ciphertexts) != self._expected:
            raise ProtocolError(f"client {message.sender} sent {len(message.ciphertexts)} ciphertexts, {self._expected} expected")
        try:
            vectors = [AddOnly(self.scheme.load(self._public.context, c)) for c in message.ciphertexts]
        except MalformedMessageError as exc:
            raise ProtocolError(f"client {message.sender}: {exc}") from exc
        self._total = vectors if self._total is None else [a + b for a, b in zip(self._total, vectors)]
        self._included.append(message.sender)
        self.received["input"][message.sender] = data

    def encrypted_sum(self) -> bytes:
        if self._total is None:
            raise ThresholdError("no client sent an encrypted input")
        ciphertexts = tuple(c.vector.serialize() for c in self._total)
        return EncryptedSum(self.session, self.fingerprint, tuple(sorted(self._included)), ciphertexts).to_bytes()

    def receive_decrypted(self, data: bytes, holder: int) -> np.ndarray:
        message = DecryptedSum.from_bytes(data)
        if message.session != self.session:
            raise ProtocolError("a decrypted sum for another session or round was refused")
        if message.words.shape[0] != self._setup.length:
            raise ProtocolError("the decrypted sum has the wrong length")
        self.received["decrypted"][holder] = data
        return np.array(message.words)

    @property
    def included(self) -> frozenset[int]:
        return frozenset(self._included)

    @property
    def ciphertexts_per_input(self) -> int:
        return self._expected
