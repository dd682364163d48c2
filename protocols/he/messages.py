"""Wire messages of the homomorphic protocols (kinds 16–20, beside the masking protocol's 1–8).

PublicContext (key holder → server → clients, once per session); HERoundSetup (server → clients);
EncryptedInput (client → server); EncryptedSum (server → key holder); DecryptedSum (key holder →
server). Every ciphertext-carrying message names the context fingerprint and the round's session
id, and is refused wherever either does not match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.wire import Reader, Writer


@dataclass(frozen=True)
class PublicContext:
    scheme: str  # bfv, ckks or ckks-approx
    capacity: int  # most clients one sum may hold (BFV's plaintext modulus depends on it)
    context: bytes  # serialized TenSEAL context: public key only
    KIND = 16

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).text(self.scheme).u32(self.capacity).blob(self.context).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        r = Reader(data, cls.KIND, "public context")
        msg = cls(r.text(), r.u32(), r.blob())
        r.end()
        return msg


@dataclass(frozen=True)
class HERoundSetup:
    round_id: str
    scheme: str
    fingerprint: bytes
    nonce: bytes  # fresh per round, so every round has its own session id
    length: int
    bound: float
    fraction_bits: int
    limbs: int
    digit_bits: int
    participants: tuple[int, ...]
    KIND = 17

    def to_bytes(self) -> bytes:
        return (Writer(self.KIND).text(self.round_id).text(self.scheme).blob(self.fingerprint).blob(self.nonce)
                .u32(self.length).f64(self.bound).u8(self.fraction_bits).u8(self.limbs).u8(self.digit_bits)
                .ids(self.participants).to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> HERoundSetup:
        r = Reader(data, cls.KIND, "HE round setup")
        msg = cls(r.text(), r.text(), r.blob(), r.blob(), r.u32(), r.f64(), r.u8(), r.u8(), r.u8(), tuple(r.ids()))
        r.end()
        return msg


@dataclass(frozen=True)
class EncryptedInput:
    session: bytes
    sender: int
    fingerprint: bytes
    ciphertexts: tuple[bytes, ...]  # limb-major: every chunk of limb 0, then of limb 1, ...
    KIND = 18

    def to_bytes(self) -> bytes:
        return _blobs(Writer(self.KIND).blob(self.session).u32(self.sender).blob(self.fingerprint), self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedInput:
        r = Reader(data, cls.KIND, "encrypted input")
        msg = cls(r.blob(), r.u32(), r.blob(), _read_blobs(r))
        r.end()
        return msg


@dataclass(frozen=True)
class EncryptedSum:
    session: bytes
    fingerprint: bytes
    included: tuple[int, ...]  # whose inputs the sum claims to hold
    ciphertexts: tuple[bytes, ...]
    KIND = 19

    def to_bytes(self) -> bytes:
        w = Writer(self.KIND).blob(self.session).blob(self.fingerprint).ids(self.included)
        return _blobs(w, self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedSum:
        r = Reader(data, cls.KIND, "encrypted sum")
        msg = cls(r.blob(), r.blob(), tuple(r.ids()), _read_blobs(r))
        r.end()
        return msg


@dataclass(frozen=True)
class DecryptedSum:
    session: bytes
    words: np.ndarray  # uint64: the exact fixed-point sum (integer schemes), or float64 bits (approximate CKKS)
    KIND = 20

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).blob(self.session).words(self.words).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> DecryptedSum:
        r = Reader(data, cls.KIND, "decrypted sum")
        msg = cls(r.blob(), r.words())
        r.end()
        return msg


def _blobs(w: Writer, blobs) -> bytes:
    w.u32(len(blobs))
    for blob in blobs:
        w.blob(blob)
    return w.to_bytes()


def _read_blobs(r: Reader) -> tuple[bytes, ...]:
    return tuple(r.blob() for _ in range(r.count(4)))
