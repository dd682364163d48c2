"""Authenticated encryption of what one client sends another through the server (AES-256-GCM).

The server relays Shamir shares but must not read or alter them, and must not move one into
another session, round or pair: the associated data names all four, so any of those changes
makes the tag fail and the receiving client abort.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocols.errors import ProtocolAbort

NONCE_BYTES = 12


def associated_data(session: bytes, round_id: str, sender: int, receiver: int) -> bytes:
    name = round_id.encode()
    return session + len(name).to_bytes(4, "big") + name + sender.to_bytes(4, "big") + receiver.to_bytes(4, "big")


def seal(key: bytes, plaintext: bytes, session: bytes, round_id: str, sender: int, receiver: int) -> bytes:
    """nonce ‖ ciphertext ‖ tag, with a fresh random nonce (the pair's key serves both directions)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data(session, round_id, sender, receiver))


def open_sealed(key: bytes, sealed: bytes, session: bytes, round_id: str, sender: int, receiver: int) -> bytes:
    """The plaintext, or ProtocolAbort when the envelope was tampered with or does not belong here."""
    if len(sealed) < NONCE_BYTES + 16:
        raise ProtocolAbort(f"the envelope from client {sender} is truncated")
    try:
        return AESGCM(key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data(session, round_id, sender, receiver)
        )
    except InvalidTag as exc:
        raise ProtocolAbort(
            f"the share envelope from client {sender} failed authentication (tampered, replayed or from another session)"
        ) from exc
