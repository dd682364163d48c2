"""Who is who in a job: long-term Ed25519 identities, the roster, and the signature on every client message.

Why. A server that may invent clients can surround a victim with clients of its own (Sybils) and
read the victim's input off the "sum"; a server that may rewrite messages can show different
clients different worlds. Both stop once every client message is signed with a long-term identity
key that the receiver checks against a roster the server did not write. The roster therefore
reaches every participant out of band, from the job's operator (the party that admits clients:
in a Flower deployment, the same list that authenticates nodes), never from the server alone.
Private identity keys stay with their client; the server holds only the roster.

Roster file (UTF-8 JSON, never pickle; ``Roster.save`` / ``Roster.load``)::

    {
      "format": "secure-afl/roster", "version": 1,
      "job_id": "mnist5k-afl-2026-05",            # names the job; every session of the job is bound to it
      "config": {"protocol": {...}, "job": {...}}, # the job's public configuration (protocol options, public run settings)
      "config_sha256": "<hex>",                   # SHA-256 of the canonical JSON of "config" (checked on load)
      "key_holder": 0,                            # the client that holds the HE secret key, or null
      "clients": {"0": "<hex Ed25519 public key, 32 bytes>", "1": "...", ...}
    }

Canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)``; the roster's digest (bound into every session id) is the SHA-256 of the canonical
JSON of the whole document. Identity file, one per client, private to it::

    {"format": "secure-afl/identity", "version": 1, "job_id": "...", "client": 3, "private_key": "<hex, 32 bytes>"}

A signature covers DOMAIN ‖ session ‖ stage ‖ sender ‖ SHA-256(content) (lengths prefixed), so a
signed message cannot be moved to another session, round, stage or sender, and a client cannot be
impersonated by anyone without its private key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import AuthenticationError, RosterError

ROSTER_FORMAT = "secure-afl/roster"
IDENTITY_FORMAT = "secure-afl/identity"
VERSION = 1
DOMAIN = b"secure-afl/signed-message/v1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw


def canonical_json(value: Any) -> bytes:
    """One byte string per JSON value, so that hashes of equal configurations are equal."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise RosterError(f"a job configuration must be plain JSON (no NaN, no objects): {exc}") from exc


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def statement(session: bytes, stage: str, sender: int, digest: bytes) -> bytes:
    """The exact bytes a client signs for one message."""
    name = stage.encode()
    return (DOMAIN + len(session).to_bytes(4, "big") + session + len(name).to_bytes(4, "big") + name
            + sender.to_bytes(4, "big") + digest)


class Identity:
    """A client's long-term signing key. Only its owner holds it; the roster holds the public half."""

    def __init__(self, client: int, key: Ed25519PrivateKey):
        self.client = client
        self._key = key
        self.public = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls, client: int) -> Identity:
        return cls(client, Ed25519PrivateKey.generate())  # OpenSSL's CSPRNG

    def sign(self, session: bytes, stage: str, digest: bytes) -> bytes:
        return self._key.sign(statement(session, stage, self.client, digest))

    def to_json(self, job_id: str) -> str:
        raw = self._key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return json.dumps({"format": IDENTITY_FORMAT, "version": VERSION, "job_id": job_id, "client": self.client,
                           "private_key": raw.hex()}, indent=1)

    @classmethod
    def from_json(cls, text: str, roster: Roster) -> Identity:
        """An identity file, checked against the roster it must belong to."""
        document = _document(text, IDENTITY_FORMAT, "identity")
        try:
            client, raw = int(document["client"]), bytes.fromhex(document["private_key"])
            identity = cls(client, Ed25519PrivateKey.from_private_bytes(raw))
        except (KeyError, TypeError, ValueError) as exc:
            raise RosterError(f"the identity file is malformed: {exc}") from exc
        if document.get("job_id") != roster.job_id:
            raise RosterError(f"the identity is for job {document.get('job_id')!r}, the roster for {roster.job_id!r}")
        if roster.clients.get(client) != identity.public:
            raise RosterError(f"client {client}'s identity key is not the one the roster lists for it")
        return identity


@dataclass(frozen=True)
class Roster:
    """The job's participants and public configuration, as the operator distributed them."""

    job_id: str
    clients: Mapping[int, bytes]  # client id → Ed25519 public key
    config: Mapping[str, Any] = field(default_factory=dict)
    key_holder: int | None = None

    def __post_init__(self):
        if not self.job_id:
            raise RosterError("a roster needs a non-empty job id")
        for client, key in self.clients.items():
            if not isinstance(client, int) or client < 0 or len(key) != PUBLIC_KEY_BYTES:
                raise RosterError(f"roster entry {client!r}: ids are non-negative integers, keys 32 bytes")
        if len(set(self.clients.values())) != len(self.clients):
            raise RosterError("the roster gives two clients the same identity key")
        if self.key_holder is not None and self.key_holder not in self.clients:
            raise RosterError(f"the key holder {self.key_holder} is not in the roster")
        canonical_json(dict(self.config))  # refuses configurations that are not plain JSON

    @cached_property
    def config_sha256(self) -> bytes:
        return sha256(canonical_json(dict(self.config)))

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the canonical roster document: bound into every session of the job."""
        return sha256(canonical_json(self._document()))

    @cached_property
    def _keys(self) -> dict[int, Ed25519PublicKey]:
        return {client: Ed25519PublicKey.from_public_bytes(key) for client, key in self.clients.items()}

    def protocol_options(self, name: str) -> Mapping[str, Any]:
        """The options the operator fixed for protocol ``name`` (what every client derives its checks from)."""
        options = self.config.get("protocol")
        if not isinstance(options, Mapping) or options.get("name") != name:
            raise RosterError(f"the job's configuration does not configure protocol {name!r}")
        return options

    def verify(self, session: bytes, stage: str, sender: int, digest: bytes, signature: bytes) -> None:
        """Refuse, naming the sender, a message from outside the roster or whose signature does not verify."""
        key = self._keys.get(sender)
        if key is None:
            raise AuthenticationError(f"client {sender} is not in the job's roster (a client the server invented?); refused")
        try:
            key.verify(signature, statement(session, stage, sender, digest))
        except InvalidSignature:
            raise AuthenticationError(
                f"client {sender}'s signature on its {stage!r} message does not verify: forged, altered, "
                "or made for another session, round or configuration"
            ) from None

    def _document(self) -> dict:
        return {"format": ROSTER_FORMAT, "version": VERSION, "job_id": self.job_id, "config": dict(self.config),
                "config_sha256": self.config_sha256.hex(), "key_holder": self.key_holder,
                "clients": {str(client): key.hex() for client, key in sorted(self.clients.items())}}

    def to_json(self) -> str:
        return json.dumps(self._document(), indent=1, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Roster:
        document = _document(text, ROSTER_FORMAT, "roster")
        try:
            clients = {int(client): bytes.fromhex(key) for client, key in document["clients"].items()}
            roster = cls(str(document["job_id"]), clients, document["config"], document["key_holder"])
            claimed = bytes.fromhex(document["config_sha256"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RosterError(f"the roster is malformed: {exc}") from exc
        if claimed != roster.config_sha256:
            raise RosterError("the roster's config_sha256 does not match its configuration (altered?)")
        return roster

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as exc:
            raise RosterError(f"cannot read roster {str(path)!r}: {exc}") from exc


@dataclass(frozen=True)
class Member:
    """What one client holds for a job: its private identity and the roster it got out of band."""

    identity: Identity
    roster: Roster

    def __post_init__(self):
        if self.roster.clients.get(self.identity.client) != self.identity.public:
            raise RosterError(f"client {self.identity.client} is not in the roster with this identity key")

    @property
    def id(self) -> int:
        return self.identity.client


def enrol(job_id: str, clients: Iterable[int], config: Mapping[str, Any] | None = None,
          key_holder: int | None = None) -> tuple[Roster, dict[int, Identity]]:
    """The operator's step: a fresh identity per client and the roster that lists their public keys."""
    identities = {client: Identity.generate(client) for client in sorted(set(int(c) for c in clients))}
    roster = Roster(job_id, {client: identity.public for client, identity in identities.items()},
                    dict(config or {}), key_holder)
    return roster, identities


def _document(text: str, expected: str, what: str) -> dict:
    try:
        document = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise RosterError(f"the {what} file is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != expected:
        raise RosterError(f"not a secure-afl {what} file (format {expected!r} expected)")
    if document.get("version") != VERSION:
        raise RosterError(f"{what} format version {document.get('version')!r}; this build reads version {VERSION}")
    return document


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a roster")


class Signed:
    """Mixin of a wire message that carries its sender's signature over (session, stage, sender, digest).

    A subclass is a frozen dataclass with ``sender`` and, last, ``signature`` fields, writes every other
    field in ``_unsigned`` and names its ``STAGE``; ``digest`` is the SHA-256 of those bytes unless the
    message defines a digest that others must be able to recompute from less (a masked input's).
    """

    STAGE = ""

    def _unsigned(self):
        raise NotImplementedError

    def digest(self) -> bytes:
        return sha256(self._unsigned().to_bytes())

    def to_bytes(self) -> bytes:
        return self._unsigned().blob(self.signature).to_bytes()

    def signed(self, identity: Identity, session: bytes):
        return replace(self, signature=identity.sign(session, self.STAGE, self.digest()))

    def verify(self, roster: Roster, session: bytes) -> None:
        roster.verify(session, self.STAGE, self.sender, self.digest(), self.signature)
