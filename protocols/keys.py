"""Key agreement and key derivation of the masking protocol (X25519 + HKDF-SHA256).

Each client holds two X25519 key pairs per session: one whose agreements seed the pairwise masks,
one whose agreements key the envelopes that carry Shamir shares between clients. Agreed secrets
are never used directly: HKDF binds them to the session (salt) and to the unordered pair and
purpose (info), so a key derived for one pair, purpose or session is useless for any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import MalformedMessageError, ProtocolAbort

KEY_BYTES = 32
MASK_PURPOSE = b"secure-afl/mask-seed"
SHARE_PURPOSE = b"secure-afl/share-envelope"
_RAW = serialization.Encoding.Raw


@dataclass(frozen=True)
class KeyPair:
    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        private = X25519PrivateKey.generate()  # OpenSSL's CSPRNG
        return cls(private, private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        private = X25519PrivateKey.from_private_bytes(raw)
        return cls(private, private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_key(raw: bytes) -> X25519PublicKey:
    if len(raw) != KEY_BYTES:
        raise MalformedMessageError(f"X25519 public keys are {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def derive(own: KeyPair, peer_public: bytes, session: bytes, purpose: bytes, own_id: int, peer_id: int) -> bytes:
    """The 32-byte key for the unordered pair {own_id, peer_id} and ``purpose`` in ``session``.

    An all-zero agreement (a low-order peer key) is refused: it would make the key public.
    """
    try:
        shared = own.private.exchange(public_key(peer_public))
    except ValueError as exc:  # cryptography refuses all-zero shared secrets
        raise ProtocolAbort(f"key agreement with client {peer_id} failed: {exc}") from exc
    low, high = sorted((own_id, peer_id))
    info = purpose + low.to_bytes(4, "big") + high.to_bytes(4, "big")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=session, info=info).derive(shared)
