"""The masking protocol's wire messages, one dataclass per message, each with its own kind byte.

Stage 1 RoundSetup (server → all) and KeyAdvert (client → server); stage 2 KeyList (server → all)
and ShareBundle (client → server, envelopes for its neighbours); stage 3 ShareDelivery (server →
client, the envelopes addressed to it) and MaskedInput (client → server); stage 4
ConsistencyRequest (server → survivors: the proposed survivor sets) and ConsistencySignature
(client → server); stage 5 UnmaskRequest (server → each signer: the sets, the signatures that
certify them, and the masked-input signatures of its surviving neighbours that did not sign) and
UnmaskResponse (client → server). Every client message is signed (``Signed``):
a key advertisement under the setup's id, everything later under the session id, so nothing
crosses sessions, rounds, stages or senders unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import MalformedMessageError, ProtocolAbort
from protocols.identity import SIGNATURE_BYTES, Signed, sha256
from protocols.wire import Reader, Writer

SELF_MASK_SHARE = 0  # share of a survivor's self-mask seed b_u
MASK_KEY_SHARE = 1  # share of a dropped client's mask private key
INPUT_DOMAIN = b"secure-afl/masking/masked-input"
SETS_DOMAIN = b"secure-afl/masking/survivor-sets"


def ids_digest(ids) -> bytes:
    """SHA-256 of a sorted id list: how a masked input names the key-sharer list it was made with."""
    return sha256(SETS_DOMAIN + b"".join(i.to_bytes(4, "big") for i in sorted(ids)))


@dataclass(frozen=True)
class RoundSetup:
    round_id: str
    roster: bytes  # the roster's digest
    config: bytes  # SHA-256 of the job's public configuration
    broadcast: bytes  # digest of the model / state broadcast with the round
    nonce: bytes  # fresh per setup, so two setups are never the same bytes
    length: int
    bound: float
    fraction_bits: int
    neighbours: int
    threshold: int
    participants: tuple[int, ...]
    KIND = 1

    def to_bytes(self) -> bytes:
        return (Writer(self.KIND).text(self.round_id).blob(self.roster).blob(self.config).blob(self.broadcast)
                .blob(self.nonce).u32(self.length).f64(self.bound).u8(self.fraction_bits).u32(self.neighbours)
                .u32(self.threshold).ids(self.participants).to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundSetup:
        r = Reader(data, cls.KIND, "round setup")
        msg = cls(r.text(), r.blob(), r.blob(), r.blob(), r.blob(), r.u32(), r.f64(), r.u8(), r.u32(), r.u32(),
                  tuple(r.ids()))
        r.end()
        return msg


@dataclass(frozen=True)
class KeyAdvert(Signed):
    round_id: str
    sender: int
    mask_key: bytes
    share_key: bytes
    signature: bytes = b""
    KIND = 2
    STAGE = "advertise"

    def _unsigned(self) -> Writer:
        return Writer(self.KIND).text(self.round_id).u32(self.sender).blob(self.mask_key).blob(self.share_key)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAdvert:
        r = Reader(data, cls.KIND, "key advertisement")
        msg = cls(r.text(), r.u32(), r.blob(), r.blob(), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class KeyList:
    round_id: str
    adverts: tuple[KeyAdvert, ...]  # sorted by sender, each with its signature
    KIND = 3

    def to_bytes(self) -> bytes:
        w = Writer(self.KIND).text(self.round_id).u32(len(self.adverts))
        for advert in self.adverts:
            w.u32(advert.sender).blob(advert.mask_key).blob(advert.share_key).blob(advert.signature)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyList:
        r = Reader(data, cls.KIND, "key list")
        round_id = r.text()
        adverts = tuple(KeyAdvert(round_id, r.u32(), r.blob(), r.blob(), r.blob()) for _ in range(r.count(16)))
        r.end()
        return cls(round_id, adverts)


@dataclass(frozen=True)
class ShareBundle(Signed):
    session: bytes
    sender: int
    envelopes: tuple[tuple[int, bytes], ...]  # (receiver, sealed shares)
    signature: bytes = b""
    KIND = 4
    STAGE = "share"

    def _unsigned(self) -> Writer:
        return _envelopes(Writer(self.KIND).blob(self.session).u32(self.sender), self.envelopes)

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareBundle:
        r = Reader(data, cls.KIND, "share bundle")
        msg = cls(r.blob(), r.u32(), _read_envelopes(r), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class ShareDelivery:
    session: bytes
    receiver: int
    key_sharers: tuple[int, ...]  # every client whose shares reached the server (U2)
    envelopes: tuple[tuple[int, bytes], ...]  # (sender, sealed shares) addressed to the receiver
    KIND = 5

    def to_bytes(self) -> bytes:
        w = Writer(self.KIND).blob(self.session).u32(self.receiver).ids(self.key_sharers)
        return _envelopes(w, self.envelopes).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareDelivery:
        r = Reader(data, cls.KIND, "share delivery")
        msg = cls(r.blob(), r.u32(), tuple(r.ids()), _read_envelopes(r))
        r.end()
        return msg


@dataclass(frozen=True)
class MaskedInput(Signed):
    session: bytes
    sender: int
    sharers: bytes  # ids_digest of the key-sharer list the client masked with
    words: np.ndarray  # uint64
    signature: bytes = b""
    KIND = 6
    STAGE = "input"

    def _unsigned(self) -> Writer:
        return Writer(self.KIND).blob(self.session).u32(self.sender).blob(self.sharers).words(self.words)

    def words_digest(self) -> bytes:
        return sha256(memoryview(np.ascontiguousarray(self.words)).cast("B"))

    def digest(self) -> bytes:
        """Recomputable from (session, sender, sharers, SHA-256 of the words): the server relays that
        header to the sender's neighbours, who check which key-sharer list it masked with."""
        return input_digest(self.session, self.sender, self.sharers, self.words_digest())

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        r = Reader(data, cls.KIND, "masked input")
        msg = cls(r.blob(), r.u32(), r.blob(), r.words(), r.blob())
        r.end()
        return msg


def input_digest(session: bytes, sender: int, sharers: bytes, words_digest: bytes) -> bytes:
    return sha256(INPUT_DOMAIN + session + sender.to_bytes(4, "big") + sharers + words_digest)


@dataclass(frozen=True)
class SurvivorSets:
    """The sets a client signs in the consistency round and reveals shares under: U2 (who shared keys),
    U3 (whose masked inputs are in the sum) and D = U2 − U3 (dropped after sharing keys)."""

    key_sharers: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def write(self, w: Writer) -> Writer:
        return w.ids(self.key_sharers).ids(self.survivors).ids(self.dropped)

    @classmethod
    def read(cls, r: Reader) -> SurvivorSets:
        return cls(tuple(r.ids()), tuple(r.ids()), tuple(r.ids()))

    def digest(self) -> bytes:
        return sha256(self.write(Writer(0)).to_bytes())

    def check(self) -> None:
        """Well-formed sets: sorted, no repeats, U3 ⊆ U2, D = U2 − U3 (a client refuses anything else)."""
        for name, ids in (("key-sharer", self.key_sharers), ("survivor", self.survivors), ("dropped", self.dropped)):
            if list(ids) != sorted(set(ids)):
                raise ProtocolAbort(f"the {name} list names a client twice or is not sorted")
        both = set(self.survivors) & set(self.dropped)
        if both:
            raise ProtocolAbort(f"clients {sorted(both)} are listed both as survivors and as dropped")
        if set(self.survivors) | set(self.dropped) != set(self.key_sharers):
            raise ProtocolAbort("the survivor and dropped lists name unknown clients or leave clients out")


@dataclass(frozen=True)
class ConsistencyRequest:
    session: bytes
    receiver: int
    sets: SurvivorSets
    KIND = 10

    def to_bytes(self) -> bytes:
        return self.sets.write(Writer(self.KIND).blob(self.session).u32(self.receiver)).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencyRequest:
        r = Reader(data, cls.KIND, "consistency request")
        msg = cls(r.blob(), r.u32(), SurvivorSets.read(r))
        r.end()
        return msg


@dataclass(frozen=True)
class ConsistencySignature(Signed):
    session: bytes
    sender: int
    sets: bytes  # digest of the SurvivorSets the client signs
    signature: bytes = b""
    KIND = 11
    STAGE = "consistency"

    def _unsigned(self) -> Writer:
        return Writer(self.KIND).blob(self.session).u32(self.sender).blob(self.sets)

    def digest(self) -> bytes:
        """The sets' digest itself: what a certificate's verifier recomputes from the sets it holds."""
        return self.sets

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencySignature:
        r = Reader(data, cls.KIND, "consistency signature")
        msg = cls(r.blob(), r.u32(), r.blob(), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class UnmaskRequest:
    session: bytes
    receiver: int
    sets: SurvivorSets
    certificate: tuple[tuple[int, bytes], ...]  # (signer, its consistency signature on the sets)
    headers: tuple[tuple[int, bytes, bytes], ...]  # (surviving neighbour that did not sign, SHA-256 of its words,
    KIND = 7                                       #  its masked-input signature)

    def to_bytes(self) -> bytes:
        """The certificate as its signers' ids and one blob of their 64-byte signatures (q may be thousands)."""
        w = self.sets.write(Writer(self.KIND).blob(self.session).u32(self.receiver))
        w.ids(signer for signer, _ in self.certificate).blob(b"".join(signature for _, signature in self.certificate))
        w.u32(len(self.headers))
        for client, words_digest, signature in self.headers:
            w.u32(client).blob(words_digest).blob(signature)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        r = Reader(data, cls.KIND, "unmask request")
        session, receiver, sets = r.blob(), r.u32(), SurvivorSets.read(r)
        signers, signatures = r.ids(), r.blob()
        if len(signatures) != SIGNATURE_BYTES * len(signers):
            raise MalformedMessageError(f"unmask request: {len(signers)} signers but {len(signatures)} signature bytes")
        certificate = tuple((signer, signatures[SIGNATURE_BYTES * i : SIGNATURE_BYTES * (i + 1)])
                            for i, signer in enumerate(signers))
        headers = tuple((r.u32(), r.blob(), r.blob()) for _ in range(r.count(12)))
        r.end()
        return cls(session, receiver, sets, certificate, headers)


@dataclass(frozen=True)
class UnmaskResponse(Signed):
    session: bytes
    sender: int
    shares: tuple[tuple[int, int, bytes], ...]  # (owner, SELF_MASK_SHARE | MASK_KEY_SHARE, share)
    signature: bytes = b""
    KIND = 8
    STAGE = "unmask"

    def _unsigned(self) -> Writer:
        w = Writer(self.KIND).blob(self.session).u32(self.sender).u32(len(self.shares))
        for owner, kind, share in self.shares:
            w.u32(owner).u8(kind).blob(share)
        return w

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        r = Reader(data, cls.KIND, "unmask response")
        session, sender = r.blob(), r.u32()
        shares = tuple((r.u32(), r.u8(), r.blob()) for _ in range(r.count(9)))
        msg = cls(session, sender, shares, r.blob())
        r.end()
        if any(kind not in (SELF_MASK_SHARE, MASK_KEY_SHARE) for _, kind, _ in shares):
            raise MalformedMessageError("unmask response: unknown share kind")
        return msg


def _envelopes(w: Writer, envelopes) -> Writer:
    w.u32(len(envelopes))
    for peer, sealed in envelopes:
        w.u32(peer).blob(sealed)
    return w


def _read_envelopes(r: Reader) -> tuple[tuple[int, bytes], ...]:
    return tuple((r.u32(), r.blob()) for _ in range(r.count(8)))
