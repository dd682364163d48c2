"""The masking protocol's wire messages, one dataclass per message, each with its own kind byte.

Stage 1 RoundSetup (server → all) and KeyAdvert (client → server); stage 2 KeyList (server → all)
and ShareBundle (client → server, envelopes for its neighbours); stage 3 ShareDelivery (server →
client, the envelopes addressed to it) and MaskedInput (client → server); stage 4 UnmaskRequest
(server → survivors) and UnmaskResponse (client → server). Every message after the key list
carries the session id, so nothing crosses sessions or rounds unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import MalformedMessageError
from protocols.wire import Reader, Writer

SELF_MASK_SHARE = 0  # share of a survivor's self-mask seed b_u
MASK_KEY_SHARE = 1  # share of a dropped client's mask private key


@dataclass(frozen=True)
class RoundSetup:
    round_id: str
    length: int
    bound: float
    fraction_bits: int
    neighbours: int
    threshold: int
    participants: tuple[int, ...]
    KIND = 1

    def to_bytes(self) -> bytes:
        return (Writer(self.KIND).text(self.round_id).u32(self.length).f64(self.bound).u8(self.fraction_bits)
                .u32(self.neighbours).u32(self.threshold).ids(self.participants).to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundSetup:
        r = Reader(data, cls.KIND, "round setup")
        msg = cls(r.text(), r.u32(), r.f64(), r.u8(), r.u32(), r.u32(), tuple(r.ids()))
        r.end()
        return msg


@dataclass(frozen=True)
class KeyAdvert:
    round_id: str
    sender: int
    mask_key: bytes
    share_key: bytes
    KIND = 2

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).text(self.round_id).u32(self.sender).blob(self.mask_key).blob(self.share_key).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAdvert:
        r = Reader(data, cls.KIND, "key advertisement")
        msg = cls(r.text(), r.u32(), r.blob(), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class KeyList:
    round_id: str
    adverts: tuple[KeyAdvert, ...]  # sorted by sender
    KIND = 3

    def to_bytes(self) -> bytes:
        w = Writer(self.KIND).text(self.round_id).u32(len(self.adverts))
        for advert in self.adverts:
            w.u32(advert.sender).blob(advert.mask_key).blob(advert.share_key)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyList:
        r = Reader(data, cls.KIND, "key list")
        round_id = r.text()
        adverts = tuple(KeyAdvert(round_id, r.u32(), r.blob(), r.blob()) for _ in range(r.count(12)))
        r.end()
        return cls(round_id, adverts)


@dataclass(frozen=True)
class ShareBundle:
    session: bytes
    sender: int
    envelopes: tuple[tuple[int, bytes], ...]  # (receiver, sealed shares)
    KIND = 4

    def to_bytes(self) -> bytes:
        return _envelopes(Writer(self.KIND).blob(self.session).u32(self.sender), self.envelopes).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareBundle:
        r = Reader(data, cls.KIND, "share bundle")
        msg = cls(r.blob(), r.u32(), _read_envelopes(r))
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
class MaskedInput:
    session: bytes
    sender: int
    words: np.ndarray  # uint64
    KIND = 6

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).blob(self.session).u32(self.sender).words(self.words).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        r = Reader(data, cls.KIND, "masked input")
        msg = cls(r.blob(), r.u32(), r.words())
        r.end()
        return msg


@dataclass(frozen=True)
class UnmaskRequest:
    session: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    KIND = 7

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).blob(self.session).ids(self.survivors).ids(self.dropped).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        r = Reader(data, cls.KIND, "unmask request")
        msg = cls(r.blob(), tuple(r.ids()), tuple(r.ids()))
        r.end()
        return msg


@dataclass(frozen=True)
class UnmaskResponse:
    session: bytes
    sender: int
    shares: tuple[tuple[int, int, bytes], ...]  # (owner, SELF_MASK_SHARE | MASK_KEY_SHARE, share)
    KIND = 8

    def to_bytes(self) -> bytes:
        w = Writer(self.KIND).blob(self.session).u32(self.sender).u32(len(self.shares))
        for owner, kind, share in self.shares:
            w.u32(owner).u8(kind).blob(share)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        r = Reader(data, cls.KIND, "unmask response")
        session, sender = r.blob(), r.u32()
        shares = tuple((r.u32(), r.u8(), r.blob()) for _ in range(r.count(9)))
        r.end()
        if any(kind not in (SELF_MASK_SHARE, MASK_KEY_SHARE) for _, kind, _ in shares):
            raise MalformedMessageError("unmask response: unknown share kind")
        return cls(session, sender, shares)


def _envelopes(w: Writer, envelopes) -> Writer:
    w.u32(len(envelopes))
    for peer, sealed in envelopes:
        w.u32(peer).blob(sealed)
    return w


def _read_envelopes(r: Reader) -> tuple[tuple[int, bytes], ...]:
    return tuple((r.u32(), r.blob()) for _ in range(r.count(8)))
