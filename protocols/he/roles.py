"""The three roles of homomorphic aggregation as state machines over wire messages.

Key holder: one designated client (named in the roster). It alone creates the secret key and
signs the public context with its identity key. It opens each round itself with a fresh nonce,
and it decrypts at most one sum per nonce it drew: a sum it computes itself from the individual
ciphertexts, each signed by a distinct roster client for exactly that round's session, of at
least m clients (the job's minimum aggregation size, ``min_clients`` in the roster,
protocols/minimum.py); never a ciphertext the server assembled or chose. So the server can
neither mint decryptions nor replay an earlier round's ciphertext nor pass one client's
ciphertext, or the sum of a victim's and its colluders', off as a sum. Client: checks the setup
against the round it derived itself and the authenticated context, refuses a round of fewer than
m participants or a statistic its contribution ledger shows it already released in the job
(protocols/ledger.py; recorded just before the ciphertexts leave), encodes, splits into limbs,
encrypts and signs. Server: holds only the public context (asserted), checks every message's
signature against the roster, session and fingerprint, relays the inputs to the key holder and
receives the decoded sum.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from protocols.base import check_vector
from protocols.errors import MalformedMessageError, ProtocolAbort, ProtocolError
from protocols.he.limbs import LimbPlan
from protocols.he.messages import DecryptedSum, EncryptedInput, HERoundSetup, PublicContext, RoundOpen
from protocols.he.schemes import Scheme, fingerprint
from protocols.he.session import HEOptions, PublicSession, check_terms, chunk_count, pack, session_id, unpack
from protocols.identity import Member, Roster
from protocols.ledger import ContributionLedger, Statistic
from protocols.minimum import require_min_clients
from protocols.terms import RoundTerms
from protocols.wire import Reader, Writer

NONCE_BYTES = 16
SNAPSHOT_KIND = 22  # the key holder between rounds (``HEKeyHolder.snapshot``): it holds the secret key, never leaves


class AddOnly:
    """A ciphertext in the key holder's running sum: it may be added to another, never multiplied.

    A plaintext-scalar multiply silently corrupted CKKS values above ≈2^19 with the common
    [60, 40, 40] parameters, and no aggregation needs one.
    """

    def __init__(self, vector):
        self._vector = vector

    @property
    def vector(self):
        return self._vector

    def __add__(self, other: AddOnly) -> AddOnly:
        return AddOnly(self._vector + other._vector)

    def __mul__(self, other):
        raise ProtocolError("homomorphic aggregation only adds ciphertexts; multiplication is refused")

    __rmul__ = __mul__
    __matmul__ = __mul__
    __pow__ = __mul__


class HEKeyHolder:
    """Opens rounds, then for each: ``begin`` (the setup), ``add`` (each signed input), ``finish`` (decrypt)."""

    def __init__(self, member: Member, _restored: tuple[Any, PublicSession, bytes, dict[bytes, RoundTerms]] | None = None):
        self.id = member.id
        self._member = member
        self._roster = member.roster
        options = HEOptions.from_roster(member.roster)
        if member.roster.key_holder != self.id:
            raise ProtocolAbort(f"client {self.id} is not the job's key holder")
        self.scheme: Scheme = options.make_scheme()
        self._options = options
        if _restored is None:
            self._context = self.scheme.secret_context()
            public = self.scheme.public_bytes(self._context)
            self.public_context = PublicContext(self.scheme.label, options.capacity, public, self.id).signed(
                member.identity, member.roster.digest).to_bytes()
            self.fingerprint = fingerprint(public)
            self._open: dict[bytes, RoundTerms] = {}  # nonce → the round it was drawn for; removed once used
        else:
            self._context, session, self.public_context, self._open = _restored
            self.fingerprint = session.fingerprint
        self._round: tuple[HERoundSetup, bytes, LimbPlan | None] | None = None
        self._total: list[AddOnly] | None = None
        self._included: list[int] = []

    def snapshot(self) -> bytes:
        """The key holder between rounds, in the wire format (kind ``SNAPSHOT_KIND``), for a transport that runs
        each stage in a fresh process (a Flower SuperNode keeps it in the node's ``Context.state``): the secret
        context (TenSEAL's own serialisation), the signed public context and the rounds opened but not yet
        decrypted. A round being summed is not in it: its nonce is already spent, so once the process that began
        it is gone that round can never be decrypted. It holds the secret key: it never leaves the key holder's
        machine."""
        secret = self._context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                         save_relin_keys=False)
        w = Writer(SNAPSHOT_KIND).blob(secret).blob(self.public_context).u32(len(self._open))
        for nonce, terms in self._open.items():
            w.blob(nonce).text(terms.round_id).f64(terms.bound).blob(terms.broadcast)
        return w.to_bytes()

    @classmethod
    def restore(cls, data: bytes, member: Member) -> HEKeyHolder:
        """The key holder a ``snapshot`` was taken of, for the same member; its public context must still be the
        one its secret context makes, signed for this roster."""
        import tenseal as ts

        r = Reader(data, SNAPSHOT_KIND, "key holder snapshot")
        secret, public_context = r.blob(), r.blob()
        opened = {}
        for _ in range(r.count(4 + NONCE_BYTES)):
            nonce = r.blob()
            opened[nonce] = RoundTerms(r.text(), r.f64(), r.blob())
        r.end()
        try:
            context = ts.context_from(secret)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise MalformedMessageError(f"key holder snapshot: the secret context does not parse: {exc}") from exc
        if not context.has_secret_key():
            raise MalformedMessageError("key holder snapshot: the context holds no secret key")
        session = PublicSession.load(public_context, member.roster)
        holder = cls(member, (context, session, public_context, opened))
        probe = np.arange(1, 9, dtype=np.int64)  # its public key must be the secret context's: one round trip
        found = holder.scheme.decrypt(holder.scheme.load(context, holder.scheme.encrypt(session.context, probe)))
        if not np.max(np.abs(found[:probe.size] - probe)) < 0.5:
            raise MalformedMessageError("key holder snapshot: the public context is not its secret context's")
        return holder

    def open_round(self, terms: RoundTerms) -> bytes:
        """A fresh nonce for the round ``terms`` names: the only sessions this key holder will decrypt."""
        nonce = os.urandom(NONCE_BYTES)
        self._open[nonce] = terms
        return RoundOpen(terms.round_id, nonce, self.id).signed(self._member.identity, self._roster.digest).to_bytes()

    def begin(self, setup_bytes: bytes) -> None:
        """Accept a setup for a round this key holder opened; checked against that round's terms."""
        setup = HERoundSetup.from_bytes(setup_bytes)
        terms = self._claim_nonce(setup)
        _, plan = _refusing(lambda: check_terms(setup, self._roster, terms, self.scheme, self.fingerprint))
        require_min_clients(len(setup.participants), self.min_clients, "the round setup")
        self._round = (setup, session_id(setup_bytes), plan)
        self._total, self._included = None, []

    def add(self, input_bytes: bytes) -> None:
        """One client's signed ciphertexts, verified and added to the key holder's own running sum."""
        setup, session, _ = self._require_round()
        message = EncryptedInput.from_bytes(input_bytes)
        self._verify_input(message, setup, session)
        if message.fingerprint != self.fingerprint:
            raise ProtocolAbort(f"client {message.sender} encrypted under another public context")
        expected = setup.limbs * chunk_count(setup.length, self.scheme.slots)
        if len(message.ciphertexts) != expected:
            raise ProtocolAbort(f"client {message.sender} sent {len(message.ciphertexts)} ciphertexts, {expected} expected")
        try:
            vectors = [AddOnly(self.scheme.load(self._context, c)) for c in message.ciphertexts]
        except MalformedMessageError as exc:
            raise ProtocolAbort(f"client {message.sender}: {exc}") from exc
        self._total = vectors if self._total is None else [a + b for a, b in zip(self._total, vectors)]
        self._included.append(message.sender)

    def finish(self) -> bytes:
        """Decrypt the sum this key holder computed, once; its canary must count the clients it added."""
        setup, session, plan = self._require_round()
        self._round = None
        require_min_clients(len(self._included), self.min_clients, "the sum of the verified clients' inputs")
        decrypted = [self.scheme.decrypt(c.vector) for c in self._total]
        sums, canaries = unpack(decrypted, setup.limbs, setup.length)
        if any(abs(float(c) - len(self._included)) > 0.5 for c in canaries):
            raise ProtocolAbort("the decrypted sum fails its canary check: a client encrypted under another key or "
                                "corrupted its ciphertext")
        words = plan.join(sums) if plan else sums[0].astype(np.float64).view(np.uint64)
        message = DecryptedSum(session, self.id, tuple(sorted(self._included)), words)
        return message.signed(self._member.identity, session).to_bytes()

    @property
    def min_clients(self) -> int:
        """m: the key holder takes no setup of fewer participants and decrypts no sum of fewer verified clients."""
        return self._options.min_clients

    def _claim_nonce(self, setup: HERoundSetup) -> RoundTerms:
        """Spend the setup's nonce: one this key holder drew and has not used (one decryption per nonce)."""
        terms = self._open.pop(setup.nonce, None)
        if terms is None:
            raise ProtocolAbort("the round setup's nonce was not drawn by this key holder, or its one decryption is "
                                "spent: refusing to decrypt")
        return terms

    def _verify_input(self, message: EncryptedInput, setup: HERoundSetup, session: bytes) -> None:
        """Made for exactly this session, by a participant not yet counted, signed by it."""
        if message.session != session:
            raise ProtocolAbort(f"client {message.sender}'s ciphertexts were made for another session or round "
                                "(replayed?); refused")
        if message.sender not in setup.participants or message.sender in self._included:
            raise ProtocolAbort(f"client {message.sender} is not in the round or already counted")
        message.verify(self._roster, session)

    def _require_round(self):
        if self._round is None:
            raise ProtocolAbort("no round is open at the key holder (begin it with a setup first)")
        return self._round


class HEClient:
    """``ledger``: the client's record of released statistics (protocols/ledger.py); None only for a client
    without the difference attack's defence (single-round tests, the attack's demonstration)."""

    def __init__(self, member: Member, vector: np.ndarray, terms: RoundTerms, public: PublicSession,
                 ledger: ContributionLedger | None = None):
        self.id = member.id
        self._member = member
        self._vector = vector
        self._terms = terms
        self._public = public  # authenticated and loaded once per job, shared by the rounds
        self._ledger = ledger

    @property
    def min_clients(self) -> int:
        """m from the roster: this client encrypts for no round of fewer participants."""
        return HEOptions.from_roster(self._member.roster).min_clients

    def encrypt(self, setup_bytes: bytes) -> bytes:
        return _refusing(lambda: self._encrypt(setup_bytes))

    def _encrypt(self, setup_bytes: bytes) -> bytes:
        public = self._public
        setup = HERoundSetup.from_bytes(setup_bytes)
        encoding, plan = check_terms(setup, self._member.roster, self._terms, public.scheme, public.fingerprint)
        if self.id not in setup.participants:
            raise ProtocolAbort(f"client {self.id} is not among the round's participants")
        require_min_clients(len(setup.participants), self.min_clients, "the round setup")
        if setup.length != self._vector.shape[0]:
            raise ProtocolAbort(f"the round expects {setup.length} values, this client holds {self._vector.shape[0]}")
        ledger = self._ledger
        statistic = None if ledger is None else Statistic.of(self._member.roster.digest, self._terms, self._vector)
        if ledger is not None:
            ledger.check(statistic)  # before the work of encrypting
        if plan is None:  # approximate CKKS: the floats themselves
            check_vector(self._vector, self._terms.bound, "the vector to encrypt")
            limbs = [self._vector]
        else:
            limbs = plan.split(encoding.encode(self._vector))  # refuses NaN/Inf/beyond the client's own bound
        ciphertexts = tuple(public.scheme.encrypt(public.context, chunk) for chunk in pack(limbs, public.scheme.slots))
        session = session_id(setup_bytes)
        reply = EncryptedInput(session, self.id, public.fingerprint, ciphertexts).signed(
            self._member.identity, session).to_bytes()
        if ledger is not None:  # the point of no return: recorded before the ciphertexts leave
            ledger.claim(statistic, session)
        return reply


class HEServer:
    def __init__(self, roster: Roster):
        self.roster = roster
        self._public: PublicSession | None = None
        self.received: dict[str, dict[int, bytes]] = {"context": {}, "open": {}, "input": {}, "decrypted": {}}
        self.session = b""
        self._setup: HERoundSetup | None = None
        self._expected = 0

    @property
    def scheme(self) -> Scheme:
        return self._public.scheme

    @property
    def fingerprint(self) -> bytes:
        return self._public.fingerprint if self._public else b""

    def receive_context(self, context_bytes: bytes) -> PublicSession:
        public = PublicSession.load(context_bytes, self.roster)  # signed by the key holder; no secret key
        assert not public.context.has_secret_key()
        self._public = public
        self.received["context"] = {self.roster.key_holder: context_bytes}
        return public

    def receive_open(self, open_bytes: bytes) -> bytes:
        """The key holder's nonce for the next round."""
        message = RoundOpen.from_bytes(open_bytes)
        if message.sender != self.roster.key_holder:
            raise ProtocolError(f"a round opening from client {message.sender}, not the key holder")
        message.verify(self.roster, self.roster.digest)
        self.received["open"] = {message.sender: open_bytes}
        return message.nonce

    def setup(self, terms: RoundTerms, participants: list[int], length: int, nonce: bytes,
              encoding, plan: LimbPlan | None) -> bytes:
        self._setup = HERoundSetup(
            terms.round_id, self.roster.digest, self.roster.config_sha256, terms.broadcast, self.scheme.label,
            self.fingerprint, nonce, length, terms.bound, encoding.fraction_bits if encoding else 0,
            plan.limbs if plan else 1, plan.digit_bits if plan else 0, tuple(sorted(participants)),
        )
        message = self._setup.to_bytes()
        self.session = session_id(message)
        self._expected = (plan.limbs if plan else 1) * chunk_count(length, self.scheme.slots)
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
        message.verify(self.roster, self.session)
        if message.fingerprint != self.fingerprint:
            raise ProtocolError(f"client {message.sender} encrypted under another public context (fingerprint mismatch)")
        if len(message.ciphertexts) != self._expected:
            raise ProtocolError(f"client {message.sender} sent {len(message.ciphertexts)} ciphertexts, {self._expected} expected")
        self.received["input"][message.sender] = data

    def inputs(self) -> list[bytes]:
        """The accepted inputs, in client order, for the key holder to verify and sum itself."""
        return [self.received["input"][c] for c in sorted(self.received["input"])]

    def receive_decrypted(self, data: bytes) -> tuple[np.ndarray, frozenset[int]]:
        """The key holder's signed sum and the clients it covers."""
        message = DecryptedSum.from_bytes(data)
        if message.sender != self.roster.key_holder:
            raise ProtocolError(f"a decrypted sum from client {message.sender}, not the key holder")
        message.verify(self.roster, self.session)
        if message.session != self.session:
            raise ProtocolError("a decrypted sum for another session or round was refused")
        if message.words.shape[0] != self._setup.length:
            raise ProtocolError("the decrypted sum has the wrong length")
        self.received["decrypted"][message.sender] = data
        return np.array(message.words), frozenset(message.included)

    @property
    def ciphertexts_per_input(self) -> int:
        return self._expected


def _refusing(step):
    """Run a client-side step; anything a hostile message provokes becomes a typed refusal."""
    try:
        return step()
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolAbort(f"refused a message that could not be processed: {type(exc).__name__}: {exc}") from exc
