"""One client of the masking protocol as an explicit state machine over wire messages.

Each method takes the server's message (bytes) for the next stage and returns the client's
reply (bytes). Every check that protects the client's input happens before it answers, and any
failure moves the client to ABORTED, after which it answers nothing: an abort never reveals
more than was already sent. The client encodes and checks its vector when the round is set up,
so an out-of-bound or non-finite input is refused before any message leaves it.
"""

from __future__ import annotations

import enum
import secrets

import numpy as np

from protocols import shamir
from protocols.encoding import FixedPoint
from protocols.envelope import open_sealed, seal
from protocols.errors import EncodingError, MalformedMessageError, ProtocolAbort
from protocols.keys import MASK_PURPOSE, SHARE_PURPOSE, KeyPair, derive
from protocols.masking.messages import (
    MASK_KEY_SHARE, SELF_MASK_SHARE, KeyAdvert, MaskedInput, RoundSetup, ShareBundle, ShareDelivery,
    UnmaskRequest, UnmaskResponse,
)
from protocols.masking.session import Session, check_setup
from protocols.prg import MaskExpander

SHARE_PLAINTEXT = 2 * shamir.SHARE_BYTES


class State(enum.Enum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"
    ABORTED = "aborted"


class MaskingClient:
    def __init__(self, client_id: int, vector: np.ndarray):
        self.id = client_id
        self._vector = vector
        self.state = State.NEW
        self._setup: RoundSetup | None = None
        self._setup_bytes = b""
        self._session: Session | None = None
        self._encoded: np.ndarray | None = None
        self._mask_keys: KeyPair | None = None
        self._share_keys: KeyPair | None = None
        self._self_seed = b""
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner → (share of b_owner, share of owner's mask key)
        self._key_sharers: frozenset[int] = frozenset()
        self._envelope_keys: dict[int, bytes] = {}  # neighbour → the key that seals shares between us

    # -- stage 1 ---------------------------------------------------------------------------
    def advertise(self, setup_bytes: bytes) -> bytes:
        def step():
            setup = RoundSetup.from_bytes(setup_bytes)
            check_setup(setup)
            if self.id not in setup.participants:
                raise ProtocolAbort(f"client {self.id} is not among the round's participants")
            if setup.length != self._vector.shape[0]:
                raise ProtocolAbort(f"the round expects {setup.length} values, this client holds {self._vector.shape[0]}")
            try:
                encoding = FixedPoint(setup.fraction_bits, setup.bound, len(setup.participants))
            except EncodingError as exc:
                raise ProtocolAbort(f"the round's encoding would overflow: {exc}") from exc
            self._encoded = encoding.encode(self._vector)  # refuses NaN/Inf/out-of-bound before anything is sent
            self._setup, self._setup_bytes = setup, setup_bytes
            self._mask_keys, self._share_keys = KeyPair.generate(), KeyPair.generate()
            return KeyAdvert(setup.round_id, self.id, self._mask_keys.public, self._share_keys.public).to_bytes()

        return self._transition(State.NEW, State.ADVERTISED, step)

    # -- stage 2 ---------------------------------------------------------------------------
    def share_keys(self, key_list_bytes: bytes) -> bytes:
        def step():
            session = Session.derive(self._setup_bytes, key_list_bytes)
            own = session.adverts.get(self.id)
            if own is None or (own.mask_key, own.share_key) != (self._mask_keys.public, self._share_keys.public):
                raise ProtocolAbort("the key list does not carry this client's own keys")
            holders = session.holders(self.id)
            if len(holders) < self._setup.threshold:
                raise ProtocolAbort(f"{len(holders)} share holders cannot meet the threshold {self._setup.threshold}")
            self._session = session
            self._self_seed = secrets.token_bytes(shamir.SECRET_BYTES)
            t = self._setup.threshold
            seed_shares = shamir.split(self._self_seed, holders, t)
            key_shares = shamir.split(self._mask_keys.private_bytes(), holders, t)
            self._held[self.id] = (seed_shares[self.id], key_shares[self.id])
            envelopes = []
            for peer in sorted(session.graph[self.id]):
                key = derive(self._share_keys, session.adverts[peer].share_key, session.session_id, SHARE_PURPOSE, self.id, peer)
                self._envelope_keys[peer] = key
                sealed = seal(key, seed_shares[peer] + key_shares[peer], session.session_id, self._setup.round_id, self.id, peer)
                envelopes.append((peer, sealed))
            return ShareBundle(session.session_id, self.id, tuple(envelopes)).to_bytes()

        return self._transition(State.ADVERTISED, State.SHARED, step)

    # -- stage 3 ---------------------------------------------------------------------------
    def masked_input(self, delivery_bytes: bytes) -> bytes:
        def step():
            session = self._session
            delivery = ShareDelivery.from_bytes(delivery_bytes)
            self._check_session(delivery.session)
            if delivery.receiver != self.id:
                raise ProtocolAbort(f"a share delivery for client {delivery.receiver} reached client {self.id}")
            sharers = _unique(delivery.key_sharers, "the list of clients that shared keys")
            if not sharers <= set(session.adverts) or self.id not in sharers:
                raise ProtocolAbort("the list of clients that shared keys names unknown clients or omits this client")
            expected = (session.graph[self.id] & sharers)
            senders = [sender for sender, _ in delivery.envelopes]
            if len(set(senders)) != len(senders) or set(senders) != expected:
                raise ProtocolAbort("the delivered envelopes do not match the neighbours that shared keys")
            if len(expected) + 1 < self._setup.threshold:
                raise ProtocolAbort(f"only {len(expected)} neighbours shared keys; the threshold is {self._setup.threshold}")
            for sender, sealed in delivery.envelopes:
                plain = open_sealed(self._envelope_keys[sender], sealed, session.session_id, self._setup.round_id, sender, self.id)
                if len(plain) != SHARE_PLAINTEXT:
                    raise ProtocolAbort(f"the envelope from client {sender} holds {len(plain)} bytes, not two shares")
                self._held[sender] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
            self._key_sharers = frozenset(sharers)
            plus, minus = [self._self_seed], []
            for peer in sorted(expected):
                seed = derive(self._mask_keys, session.adverts[peer].mask_key, session.session_id, MASK_PURPOSE, self.id, peer)
                (plus if peer > self.id else minus).append(seed)
            words, self._encoded = self._encoded, None
            MaskExpander(words.shape[0]).apply(words, plus, minus)
            return MaskedInput(session.session_id, self.id, words).to_bytes()

        return self._transition(State.SHARED, State.MASKED, step)

    # -- stage 4 ---------------------------------------------------------------------------
    def unmask(self, request_bytes: bytes) -> bytes:
        def step():
            request = UnmaskRequest.from_bytes(request_bytes)
            self._check_session(request.session)
            survivors = _unique(request.survivors, "the survivor list")
            dropped = _unique(request.dropped, "the dropped list")
            if survivors & dropped:
                raise ProtocolAbort(f"clients {sorted(survivors & dropped)} are listed both as survivors and as dropped")
            if self.id in dropped:
                raise ProtocolAbort("this client is listed as dropped")
            if self.id not in survivors:
                raise ProtocolAbort("this client is not listed among the survivors")
            if (survivors | dropped) != self._key_sharers:
                raise ProtocolAbort("the survivor and dropped lists name unknown clients or leave clients out")
            if len(survivors) < self._setup.threshold:
                raise ProtocolAbort(f"only {len(survivors)} survivors, fewer than the threshold {self._setup.threshold}")
            shares = []
            for owner in sorted(self._held):
                seed_share, key_share = self._held[owner]
                if owner in survivors:
                    shares.append((owner, SELF_MASK_SHARE, seed_share))
                elif owner in dropped:
                    shares.append((owner, MASK_KEY_SHARE, key_share))
            self._held.clear()
            return UnmaskResponse(self._session.session_id, self.id, tuple(shares)).to_bytes()

        return self._transition(State.MASKED, State.DONE, step)

    # -- helpers ---------------------------------------------------------------------------
    def _check_session(self, session_id: bytes) -> None:
        if session_id != self._session.session_id:
            raise ProtocolAbort("a message for another session or round (replayed or misrouted)")

    def _transition(self, expected: State, following: State, step) -> bytes:
        """Run one stage if the client is where that stage starts; abort on any failure."""
        if self.state is not expected:
            was = self.state
            self._abort()
            raise ProtocolAbort(f"client {self.id}: a {following.value!r} request arrived in state {was.value!r}"
                                " (repeated, replayed or out of order)")
        try:
            reply = step()
        except (ProtocolAbort, MalformedMessageError):
            self._abort()
            raise
        self.state = following
        return reply

    def _abort(self) -> None:
        self.state = State.ABORTED
        self._held.clear()
        self._envelope_keys.clear()
        self._encoded = None
        self._self_seed = b""


def _unique(ids, what: str) -> frozenset[int]:
    if len(set(ids)) != len(ids):
        raise ProtocolAbort(f"{what} names a client twice")
    return frozenset(ids)
