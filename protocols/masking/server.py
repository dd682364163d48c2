"""The server of the masking protocol as an explicit state machine over wire messages.

The server relays and counts; it never holds a client secret beyond what the unmasking stage
legitimately reveals (self-mask seeds of survivors, mask keys of dropped clients). It checks
every client message (session, sender, sizes, duplicates) and raises ProtocolError on anything
malformed, ThresholdError when too few clients remain. ``received`` keeps the raw bytes of
every message it was sent, by stage, which is exactly the server's view for the transcript.
"""

from __future__ import annotations

import numpy as np

from protocols import shamir
from protocols.encoding import FixedPoint
from protocols.errors import ProtocolError, ThresholdError
from protocols.graph import GraphParameters
from protocols.keys import MASK_PURPOSE, KeyPair, derive
from protocols.masking.messages import (
    SELF_MASK_SHARE, KeyAdvert, KeyList, MaskedInput, RoundSetup, ShareBundle, ShareDelivery,
    UnmaskRequest, UnmaskResponse,
)
from protocols.masking.session import STAGES, Session, check_parameters_fit
from protocols.prg import MaskExpander


class MaskingServer:
    def __init__(self, round_id: str, participants: list[int], length: int, encoding: FixedPoint,
                 parameters: GraphParameters):
        self.setup = RoundSetup(round_id, length, encoding.bound, encoding.fraction_bits, parameters.neighbours,
                                parameters.threshold, tuple(sorted(participants)))
        check_parameters_fit(self.setup)
        self._setup_bytes = self.setup.to_bytes()
        self.encoding = encoding
        self.received: dict[str, dict[int, bytes]] = {stage: {} for stage in STAGES}
        self.session: Session | None = None
        self._adverts: dict[int, KeyAdvert] = {}
        self._bundles: dict[int, ShareBundle] = {}
        self._masked: dict[int, np.ndarray] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self._request: UnmaskRequest | None = None

    @property
    def threshold(self) -> int:
        return self.setup.threshold

    def setup_message(self) -> bytes:
        return self._setup_bytes

    # -- stage 1 ---------------------------------------------------------------------------
    def receive_advert(self, data: bytes) -> None:
        advert = KeyAdvert.from_bytes(data)
        if advert.round_id != self.setup.round_id:
            raise ProtocolError(f"a key advertisement for round {advert.round_id!r} reached round {self.setup.round_id!r}")
        self._accept("advertise", advert.sender, data, self.setup.participants)
        self._adverts[advert.sender] = advert

    def key_list(self) -> bytes:
        """Broadcast of every advertised key; fixes the session."""
        self._require(len(self._adverts), "advertised keys")
        key_list = KeyList(self.setup.round_id, tuple(self._adverts[c] for c in sorted(self._adverts))).to_bytes()
        self.session = Session.derive(self.setup_message(), key_list)
        return key_list

    # -- stage 2 ---------------------------------------------------------------------------
    def receive_shares(self, data: bytes) -> None:
        bundle = ShareBundle.from_bytes(data)
        self._check_session(bundle.session, "share bundle")
        self._accept("share", bundle.sender, data, self.session.adverts)
        receivers = [receiver for receiver, _ in bundle.envelopes]
        if sorted(receivers) != sorted(self.session.graph[bundle.sender]) or len(set(receivers)) != len(receivers):
            del self.received["share"][bundle.sender]
            raise ProtocolError(f"client {bundle.sender} sent envelopes for clients other than its neighbours")
        self._bundles[bundle.sender] = bundle

    def deliveries(self) -> dict[int, bytes]:
        """For each client that shared keys: who did (U2) and the envelopes addressed to it."""
        sharers = tuple(sorted(self._bundles))
        self._require(len(sharers), "clients sharing keys")
        inbox: dict[int, list[tuple[int, bytes]]] = {c: [] for c in sharers}
        for sender in sharers:
            for receiver, sealed in self._bundles[sender].envelopes:
                if receiver in inbox:
                    inbox[receiver].append((sender, sealed))
        return {c: ShareDelivery(self.session.session_id, c, sharers, tuple(inbox[c])).to_bytes() for c in sharers}

    # -- stage 3 ---------------------------------------------------------------------------
    def receive_masked(self, data: bytes) -> None:
        masked = MaskedInput.from_bytes(data)
        self._check_session(masked.session, "masked input")
        self._accept("input", masked.sender, data, self._bundles)
        if masked.words.shape[0] != self.setup.length:
            del self.received["input"][masked.sender]
            raise ProtocolError(f"client {masked.sender} sent {masked.words.shape[0]} words, the round has {self.setup.length}")
        self._masked[masked.sender] = masked.words

    def unmask_requests(self) -> dict[int, bytes]:
        """The same survivor/dropped lists for every survivor."""
        survivors = tuple(sorted(self._masked))
        self._require(len(survivors), "masked inputs")
        dropped = tuple(sorted(set(self._bundles) - set(survivors)))
        self._request = UnmaskRequest(self.session.session_id, survivors, dropped)
        message = self._request.to_bytes()
        return dict.fromkeys(survivors, message)

    # -- stage 4 ---------------------------------------------------------------------------
    def receive_unmask(self, data: bytes) -> None:
        response = UnmaskResponse.from_bytes(data)
        self._check_session(response.session, "unmask response")
        self._accept("unmask", response.sender, data, self._masked)
        self._responses[response.sender] = response

    def finish(self) -> np.ndarray:
        """Reconstruct the secrets the survivors revealed, strip every mask, return the sum as uint64 words."""
        self._require(len(self._responses), "unmask responses")
        survivors, dropped = set(self._request.survivors), set(self._request.dropped)
        seed_shares: dict[int, dict[int, bytes]] = {c: {} for c in survivors}
        key_shares: dict[int, dict[int, bytes]] = {c: {} for c in dropped}
        for holder, response in self._responses.items():
            allowed = self.session.holders(holder)
            for owner, kind, share in response.shares:
                if owner not in allowed:
                    raise ProtocolError(f"client {holder} returned a share of client {owner}, which it cannot hold")
                target = seed_shares if kind == SELF_MASK_SHARE else key_shares
                if owner in target:
                    target[owner][holder] = share
        total = np.zeros(self.setup.length, dtype=np.uint64)
        for words in self._masked.values():
            np.add(total, words, out=total)
        rebuild = shamir.Reconstructor(self.threshold)
        plus, minus = [], []  # masks to add back and to remove
        for owner in sorted(survivors):
            minus.append(self._secret(rebuild, seed_shares[owner], owner, "self-mask seed"))
        for owner in sorted(dropped):
            mask_keys = KeyPair.from_private_bytes(self._secret(rebuild, key_shares[owner], owner, "mask key"))
            if mask_keys.public != self.session.adverts[owner].mask_key:
                raise ProtocolError(f"the reconstructed mask key of client {owner} does not match its advertised key")
            for peer in sorted(self.session.graph[owner] & survivors):
                seed = derive(mask_keys, self.session.adverts[peer].mask_key, self.session.session_id, MASK_PURPOSE, owner, peer)
                # the survivor added +PRG when the dropped client's id is larger, −PRG otherwise
                (minus if owner > peer else plus).append(seed)
        MaskExpander(self.setup.length).apply(total, plus, minus)
        return total

    @property
    def masked_inputs(self) -> dict[int, np.ndarray]:
        """The masked vectors as the server received them (uniformly random words to it)."""
        return dict(self._masked)

    @property
    def included(self) -> frozenset[int]:
        """Clients whose inputs are in the sum."""
        return frozenset(self._masked)

    # -- helpers ---------------------------------------------------------------------------
    def _secret(self, rebuild: shamir.Reconstructor, shares: dict[int, bytes], owner: int, what: str) -> bytes:
        if len(shares) < self.threshold:
            raise ThresholdError(
                f"only {len(shares)} shares of client {owner}'s {what} arrived, {self.threshold} are needed; "
                "the round cannot be unmasked"
            )
        return rebuild.reconstruct(shares)

    def _require(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise ThresholdError(f"only {count} {what}, fewer than the threshold {self.threshold}; the round is abandoned")

    def _check_session(self, session_id: bytes, what: str) -> None:
        if self.session is None or session_id != self.session.session_id:
            raise ProtocolError(f"a {what} for another session or round was refused")

    def _accept(self, stage: str, sender: int, data: bytes, expected) -> None:
        if sender not in expected:
            raise ProtocolError(f"a {stage} message from client {sender}, which is not expected at this stage")
        if sender in self.received[stage]:
            raise ProtocolError(f"a second {stage} message from client {sender} was refused")
        self.received[stage][sender] = data
