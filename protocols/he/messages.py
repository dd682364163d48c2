"""Wire messages of the homomorphic protocols (kinds 16–21, beside the masking protocol's 1–11).

PublicContext (key holder → server → clients, once per job, signed by the key holder);
RoundOpen (key holder → server: the key holder's own fresh nonce for a round, signed);
HERoundSetup (server → clients and key holder); EncryptedInput (client → server → key holder,
signed by the client over the session it was made for); DecryptedSum (key holder → server,
signed). Every ciphertext-carrying message names the context fingerprint and the round's session
id, and is refused wherever either does not match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.identity import Signed
from protocols.wire import Reader, Writer


@dataclass(frozen=True)
class PublicContext(Signed):
    scheme: str  # bfv, ckks or ckks-approx
    capacity: int  # most clients one sum may hold (BFV's plaintext modulus depends on it)
    context: bytes  # serialized TenSEAL context: public key only
    sender: int = 0  # the key holder
    signature: bytes = b""
    KIND = 16
    STAGE = "context"

    def _unsigned(self) -> Writer:
        return Writer(self.KIND).text(self.scheme).u32(self.capacity).blob(self.context).u32(self.sender)

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        r = Reader(data, cls.KIND, "public context")
        msg = cls(r.text(), r.u32(), r.blob(), r.u32(), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class RoundOpen(Signed):
    round_id: str
    nonce: bytes  # drawn by the key holder: it decrypts at most one sum per nonce it drew
    sender: int = 0  # the key holder
    signature: bytes = b""
    KIND = 21
    STAGE = "open"

    def _unsigned(self) -> Writer:
        return Writer(self.KIND).text(self.round_id).blob(self.nonce).u32(self.sender)

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundOpen:
        r = Reader(data, cls.KIND, "round opening")
        msg = cls(r.text(), r.blob(), r.u32(), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class HERoundSetup:
    round_id: str
    roster: bytes  # the roster's digest
    config: bytes  # SHA-256 of the job's public configuration
    broadcast: bytes  # digest of the model / state broadcast with the round
    scheme: str
    fingerprint: bytes
    nonce: bytes  # the key holder's, from its RoundOpen: every round has its own session id
    length: int
    bound: float
    fraction_bits: int
    limbs: int
    digit_bits: int
    participants: tuple[int, ...]
    KIND = 17

    def to_bytes(self) -> bytes:
        return (Writer(self.KIND).text(self.round_id).blob(self.roster).blob(self.config).blob(self.broadcast)
                .text(self.scheme).blob(self.fingerprint).blob(self.nonce).u32(self.length).f64(self.bound)
                .u8(self.fraction_bits).u8(self.limbs).u8(self.digit_bits).ids(self.participants).to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> HERoundSetup:
        r = Reader(data, cls.KIND, "HE round setup")
        msg = cls(r.text(), r.blob(), r.blob(), r.blob(), r.text(), r.blob(), r.blob(), r.u32(), r.f64(), r.u8(),
                  r.u8(), r.u8(), tuple(r.ids()))
        r.end()
        return msg


@dataclass(frozen=True)
class EncryptedInput(Signed):
    session: bytes
    sender: int
    fingerprint: bytes
    ciphertexts: tuple[bytes, ...]  # limb-major: every chunk of limb 0, then of limb 1, ...
    signature: bytes = b""
    KIND = 18
    STAGE = "input"

    def _unsigned(self) -> Writer:
        return _blobs(Writer(self.KIND).blob(self.session).u32(self.sender).blob(self.fingerprint), self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedInput:
        r = Reader(data, cls.KIND, "encrypted input")
        msg = cls(r.blob(), r.u32(), r.blob(), _read_blobs(r), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class DecryptedSum(Signed):
    session: bytes
    sender: int  # the key holder
    included: tuple[int, ...]  # the clients whose verified inputs the key holder summed
    words: np.ndarray  # uint64: the exact fixed-point sum (integer schemes), or float64 bits (approximate CKKS)
    signature: bytes = b""
    KIND = 20
    STAGE = "decrypted"

    def _unsigned(self) -> Writer:
        return Writer(self.KIND).blob(self.session).u32(self.sender).ids(self.included).words(self.words)

    @classmethod
    def from_bytes(cls, data: bytes) -> DecryptedSum:
        r = Reader(data, cls.KIND, "decrypted sum")
        msg = cls(r.blob(), r.u32(), tuple(r.ids()), r.words(), r.blob())
        r.end()
        return msg


def _blobs(w: Writer, blobs) -> Writer:
    w.u32(len(blobs))
    for blob in blobs:
        w.blob(blob)
    return w


def _read_blobs(r: Reader) -> tuple[bytes, ...]:
    return tuple(r.blob() for _ in range(r.count(4)))
