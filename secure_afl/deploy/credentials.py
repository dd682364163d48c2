"""Throw-away TLS certificates and SuperNode keys for a federation on one machine.

``secure-afl deploy local --tls`` serves the SuperLink over HTTPS with a certificate signed by a CA made
for that run alone (its key is deleted with the run's directory); ``--auth`` also turns on Flower's node
authentication, so the SuperLink accepts only SuperNodes whose public keys the operator registered
(``flwr supernode register``). A real multi-machine deployment makes the same files once, with its
own CA and the SuperLink's public name in the certificate (the README's Deployment section). Keys come
from the operating system's random source (``cryptography``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 2  # a run's certificates outlive no run


@dataclass(frozen=True)
class Certificates:
    """What the SuperLink serves (``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile``) and what every SuperNode and
    the ``flwr`` CLI trust (``--root-certificates`` / ``root-certificates``)."""

    ca: Path
    server: Path
    server_key: Path

    def superlink_flags(self) -> list[str]:
        return ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(self.server), "--ssl-keyfile", str(self.server_key)]


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Certificates:
    """A CA and a server certificate for ``hosts`` (IP addresses or DNS names) signed by it, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secure-afl throw-away CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])).issuer_name(ca_name)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
              .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA384()))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / "server.key", _pem_key(server_key))  # the CA's key is never written: nothing else is signed
    return Certificates(directory / "ca.crt", directory / "server.pem", directory / "server.key")


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's key pair (ECDSA P-384, OpenSSH format, as ``ssh-keygen -t ecdsa -b 384`` writes it): the private
    key for ``flower-supernode --auth-supernode-private-key``, the public one for ``flwr supernode register``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write_private(directory / name, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = directory / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public
