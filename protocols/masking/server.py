"""The server of the masking protocol as an explicit state machine over wire messages.

The server relays and counts; it never holds a client secret beyond what the unmasking stage
legitimately reveals (self-mask seeds of survivors, mask keys of dropped clients). It checks
every client message (signature against the roster, session, sender, sizes, duplicates, every
revealed share) and raises ProtocolError naming the client on anything malformed, ThresholdError
when too few clients remain. ``received`` keeps the raw bytes of every message it was sent, by
stage, which is exactly the server's view for the transcript. The messages it sends are built by
one method each (``delivery``, ``consistency_request``, ``unmask_request``) for whatever lists it
is given, so a test can play a server that lies with the same code an honest one runs.
"""

from __future__ import annotations

import os

import numpy as np

from protocols import shamir
from protocols.encoding import FixedPoint
from protocols.errors import MalformedMessageError, ProtocolError, ThresholdError
from protocols.graph import GraphParameters
from protocols.identity import Roster
from protocols.keys import MASK_PURPOSE, KeyPair, derive
from protocols.masking.messages import (
    MASK_KEY_SHARE, SELF_MASK_SHARE, ConsistencyRequest, ConsistencySignature, KeyAdvert, KeyList, MaskedInput,
    RoundSetup, ShareBundle, ShareDelivery, SurvivorSets, UnmaskRequest, UnmaskResponse, ids_digest,
)
from protocols.masking.session import STAGES, MaskingOptions, Session, check_parameters_fit, setup_id
from protocols.minimum import require_min_clients
from protocols.prg import MaskExpander
from protocols.terms import RoundTerms

NONCE_BYTES = 16


class MaskingServer:
    def __init__(self, roster: Roster, terms: RoundTerms, participants: list[int], length: int, encoding: FixedPoint,
                 parameters: GraphParameters):
        self.roster = roster
        self.setup = RoundSetup(terms.round_id, roster.digest, roster.config_sha256, terms.broadcast,
                                os.urandom(NONCE_BYTES), length, encoding.bound, encoding.fraction_bits,
                                parameters.neighbours, parameters.threshold, tuple(sorted(participants)))
        check_parameters_fit(self.setup)
        self._setup_bytes = self.setup.to_bytes()
        self.encoding = encoding
        self.received: dict[str, dict[int, bytes]] = {stage: {} for stage in STAGES}
        self.session: Session | None = None
        self._adverts: dict[int, KeyAdvert] = {}
        self._bundles: dict[int, ShareBundle] = {}
        self._inbox: dict[int, dict[int, bytes]] = {}  # receiver → sender → sealed shares
        self._masked: dict[int, MaskedInput] = {}
        self._sets: SurvivorSets | None = None
        self._signatures: dict[int, bytes] = {}
        self._responses: dict[int, UnmaskResponse] = {}

    @property
    def threshold(self) -> int:
        return self.setup.threshold

    @property
    def min_clients(self) -> int:
        """The job's m from the roster: the honest server abandons a round its clients would refuse for it."""
        return MaskingOptions.from_roster(self.roster).min_clients

    def setup_message(self) -> bytes:
        return self._setup_bytes

    # -- stage 1 ---------------------------------------------------------------------------
    def receive_advert(self, data: bytes) -> None:
        advert = KeyAdvert.from_bytes(data)
        if advert.round_id != self.setup.round_id:
            raise ProtocolError(f"a key advertisement for round {advert.round_id!r} reached round {self.setup.round_id!r}")
        advert.verify(self.roster, setup_id(self._setup_bytes))
        self._accept("advertise", advert.sender, data, self.setup.participants)
        self._adverts[advert.sender] = advert

    def key_list(self) -> bytes:
        """Broadcast of every advertised key; fixes the session."""
        self._require(len(self._adverts), "advertised keys")
        key_list = KeyList(self.setup.round_id, tuple(self._adverts[c] for c in sorted(self._adverts))).to_bytes()
        self.session = Session.derive(self.setup_message(), key_list, self.min_clients)
        return key_list

    # -- stage 2 ---------------------------------------------------------------------------
    def receive_shares(self, data: bytes) -> None:
        bundle = ShareBundle.from_bytes(data)
        self._check_session(bundle.session, "share bundle")
        bundle.verify(self.roster, self.session.session_id)
        receivers = [receiver for receiver, _ in bundle.envelopes]
        if sorted(receivers) != sorted(self.session.graph.get(bundle.sender, ())) or len(set(receivers)) != len(receivers):
            raise ProtocolError(f"client {bundle.sender} sent envelopes for clients other than its neighbours")
        self._accept("share", bundle.sender, data, self.session.adverts)
        self._bundles[bundle.sender] = bundle
        for receiver, sealed in bundle.envelopes:
            self._inbox.setdefault(receiver, {})[bundle.sender] = sealed

    def key_sharers(self) -> tuple[int, ...]:
        """U2: every client whose share bundle arrived."""
        return tuple(sorted(self._bundles))

    def delivery(self, receiver: int, sharers) -> bytes:
        """The envelopes addressed to ``receiver`` from the clients in ``sharers``, with that list."""
        sharers = tuple(sorted(sharers))
        inbox = self._inbox.get(receiver, {})
        envelopes = tuple((sender, inbox[sender]) for sender in sharers if sender in inbox)
        return ShareDelivery(self.session.session_id, receiver, sharers, envelopes).to_bytes()

    def deliveries(self) -> dict[int, bytes]:
        """For each client that shared keys: who did (U2) and the envelopes addressed to it."""
        sharers = self.key_sharers()
        self._require(len(sharers), "clients sharing keys")
        return {c: self.delivery(c, sharers) for c in sharers}

    # -- stage 3 ---------------------------------------------------------------------------
    def receive_masked(self, data: bytes) -> None:
        masked = MaskedInput.from_bytes(data)
        self._check_session(masked.session, "masked input")
        if masked.words.shape[0] != self.setup.length:
            raise ProtocolError(f"client {masked.sender} sent {masked.words.shape[0]} words, the round has {self.setup.length}")
        masked.verify(self.roster, self.session.session_id)
        self._accept("input", masked.sender, data, self._bundles)
        self._masked[masked.sender] = masked

    def survivor_sets(self) -> SurvivorSets:
        """The honest proposal: U2 = who shared keys, U3 = whose masked inputs arrived, D = U2 − U3."""
        sharers, survivors = self.key_sharers(), tuple(sorted(self._masked))
        return SurvivorSets(sharers, survivors, tuple(sorted(set(sharers) - set(survivors))))

    # -- stage 4: consistency ---------------------------------------------------------------
    def consistency_request(self, receiver: int, sets: SurvivorSets) -> bytes:
        return ConsistencyRequest(self.session.session_id, receiver, sets).to_bytes()

    def consistency_requests(self) -> dict[int, bytes]:
        """The same proposal for every survivor."""
        sets = self.survivor_sets()
        self._require(len(sets.survivors), "masked inputs")
        require_min_clients(len(sets.survivors), self.min_clients, "the round's survivor set")
        sharers = ids_digest(sets.key_sharers)
        if any(self._masked[c].sharers != sharers for c in sets.survivors):
            raise ProtocolError("a client masked with a key-sharer list other than the one it was sent")
        self._sets = sets
        return {c: self.consistency_request(c, sets) for c in sets.survivors}

    def receive_signature(self, data: bytes) -> None:
        message = ConsistencySignature.from_bytes(data)
        self._check_session(message.session, "consistency signature")
        if message.sets != self._sets.digest():
            raise ProtocolError(f"client {message.sender} signed survivor sets other than the proposed ones")
        message.verify(self.roster, self.session.session_id)
        self._accept("consistency", message.sender, data, self._sets.survivors)
        self._signatures[message.sender] = message.signature

    @property
    def signatures(self) -> dict[int, bytes]:
        """The consistency signatures gathered on the proposed sets (survivor → signature)."""
        return dict(self._signatures)

    # -- stage 5 ---------------------------------------------------------------------------
    def unmask_request(self, receiver: int, sets: SurvivorSets, certificate: dict[int, bytes]) -> bytes:
        """``sets`` and ``certificate`` for ``receiver``, with the masked-input signature of each of its surviving
        neighbours that is not among the signers."""
        unsigned = (self.session.graph[receiver] & set(sets.survivors)) - set(certificate)
        headers = tuple((c, self._masked[c].words_digest(), self._masked[c].signature)
                        for c in sorted(unsigned) if c in self._masked)
        return UnmaskRequest(self.session.session_id, receiver, sets, tuple(sorted(certificate.items())),
                             headers).to_bytes()

    def unmask_requests(self) -> dict[int, bytes]:
        """The certified proposal, to every client that signed it."""
        if len(self._signatures) < self.session.quorum:
            raise ThresholdError(f"only {len(self._signatures)} survivors signed the survivor sets; {self.session.quorum} "
                                 "must before anything is unmasked; the round is abandoned")
        return {c: self.unmask_request(c, self._sets, self._signatures) for c in sorted(self._signatures)}

    def receive_unmask(self, data: bytes) -> None:
        """An unmask response, every share checked now, so a bad one is refused naming its sender."""
        response = UnmaskResponse.from_bytes(data)
        self._check_session(response.session, "unmask response")
        response.verify(self.roster, self.session.session_id)
        survivors, dropped = set(self._sets.survivors), set(self._sets.dropped)
        allowed, owners = self.session.holders(response.sender), set()
        for owner, kind, share in response.shares:
            expected = SELF_MASK_SHARE if owner in survivors else MASK_KEY_SHARE if owner in dropped else None
            if owner not in allowed or owner in owners or kind != expected:
                raise ProtocolError(f"client {response.sender} returned a share of client {owner} it cannot hold, twice, "
                                    "or of the wrong kind")
            try:
                shamir.share_value(share)
            except MalformedMessageError as exc:
                raise ProtocolError(f"client {response.sender} returned a share of client {owner} that is not a field "
                                    "element; its response is refused") from exc
            owners.add(owner)
        self._accept("unmask", response.sender, data, self._signatures)
        self._responses[response.sender] = response

    def finish(self) -> np.ndarray:
        """Reconstruct the secrets the survivors revealed, strip every mask, return the sum as uint64 words."""
        self._require(len(self._responses), "unmask responses")
        survivors, dropped = set(self._sets.survivors), set(self._sets.dropped)
        seed_shares: dict[int, dict[int, bytes]] = {c: {} for c in survivors}
        key_shares: dict[int, dict[int, bytes]] = {c: {} for c in dropped}
        for holder, response in self._responses.items():
            for owner, kind, share in response.shares:  # checked on receipt
                (seed_shares if kind == SELF_MASK_SHARE else key_shares)[owner][holder] = share
        total = np.zeros(self.setup.length, dtype=np.uint64)
        for masked in self._masked.values():
            np.add(total, masked.words, out=total)
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
        return {c: masked.words for c, masked in self._masked.items()}

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
