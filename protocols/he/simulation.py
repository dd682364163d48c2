"""Homomorphic aggregation in one process: key holder, clients and server exchanging wire bytes.

One protocol object is one session: the key holder (a designated client, by default the lowest
id of the first round) creates the keys on the first round and its public context is sent once;
every later round reuses it. Bytes and seconds are measured per role.
"""

from __future__ import annotations

import time

import numpy as np

from protocols.base import AggregationProtocol, RoundResult
from protocols.encoding import FixedPoint
from protocols.errors import ParameterError
from protocols.he.limbs import LimbPlan
from protocols.he.roles import HEClient, HEKeyHolder, HEServer
from protocols.he.session import PublicSession, make_scheme
from protocols.transcript import RoundView


class HEProtocol(AggregationProtocol):
    secure = True
    scheme_name: str
    default_limbs: int = 1

    def __init__(self, limbs: int | None = None, fraction_bits: int | None = None, key_holder: int | None = None,
                 min_clients: int | None = None, record: bool = False):
        super().__init__(record)
        self.limbs = self.default_limbs if limbs is None else limbs
        if self.limbs < 1:
            raise ParameterError(f"limbs must be at least 1, got {self.limbs}")
        self.fraction_bits = fraction_bits
        self.key_holder_id = key_holder
        self.min_clients = min_clients
        self._session: tuple[HEKeyHolder, HEServer, PublicSession, int] | None = None
        self._clients_seen_context: set[int] = set()

    def plan(self, clients: int, bound: float) -> tuple[FixedPoint | None, LimbPlan | None]:
        scheme = make_scheme(self.scheme_name, clients)
        if not scheme.exact:
            if self.fraction_bits is not None or self.limbs != 1:
                raise ParameterError("approximate CKKS encrypts the floats themselves: no fraction bits or limbs")
            return None, None
        plan = LimbPlan.for_scheme(self.limbs, scheme.limit, clients)
        return plan.encoding(clients, bound, self.fraction_bits), plan

    def prepare(self, clients: int, bound: float) -> None:
        self.plan(clients, bound)

    def _start_session(self, clients: list[int]) -> tuple[HEKeyHolder, HEServer, PublicSession, int]:
        holder_id = min(clients) if self.key_holder_id is None else self.key_holder_id
        if holder_id not in clients:
            raise ParameterError(f"the key holder {holder_id} is not among the round's clients")
        scheme = make_scheme(self.scheme_name, len(clients))
        min_clients = self.min_clients if self.min_clients is not None else min(len(clients), 2)
        holder = HEKeyHolder(scheme, min_clients)
        server = HEServer(scheme)
        server.receive_context(holder.public_context, holder_id)
        return holder, server, PublicSession.load(holder.public_context), holder_id

    def _aggregate(self, round_id, contributions, bound, length, drop):
        clients = sorted(contributions)
        if self._session is None:
            self._session = self._start_session(clients)
        holder, server, public, holder_id = self._session
        if server.scheme.capacity and len(clients) > server.scheme.capacity:
            raise ParameterError("more clients than the session's BFV parameters were chosen for")
        encoding, plan = self.plan(len(clients), bound)
        upload = dict.fromkeys(clients + [holder_id], 0)  # the key holder decrypts even in rounds it sits out
        download = dict.fromkeys(clients + [holder_id], 0)
        seconds = {"encrypt": {}, "server_add": 0.0, "decrypt": 0.0}
        context_bytes = len(holder.public_context)
        first_round = not self._clients_seen_context  # the public context reaches the server once per session
        upload[holder_id] += context_bytes if first_round else 0
        setup = server.setup(round_id, clients, length, bound, encoding, plan)
        dropped = drop.get("input", frozenset())
        for c in clients:
            client = HEClient(c, contributions[c], public)
            if c not in self._clients_seen_context:  # the public context travels once per session
                download[c] += context_bytes
                self._clients_seen_context.add(c)
            download[c] += len(setup)
            if c in dropped:  # it leaves before sending its ciphertexts
                continue
            start = time.perf_counter()
            message = client.encrypt(setup)
            seconds["encrypt"][c] = time.perf_counter() - start
            upload[c] += len(message)
            start = time.perf_counter()
            server.receive_input(message)
            seconds["server_add"] += time.perf_counter() - start
        aggregate = server.encrypted_sum()
        download[holder_id] += len(aggregate)
        start = time.perf_counter()
        decrypted = holder.decrypt(setup, aggregate)
        seconds["decrypt"] = time.perf_counter() - start
        upload[holder_id] += len(decrypted)
        words = server.receive_decrypted(decrypted, holder_id)
        total = encoding.decode(words) if encoding else words.view(np.float64).copy()
        details = {
            **server.scheme.describe(),
            "exact": server.scheme.exact,
            "key_holder": holder_id,
            "fraction_bits": encoding.fraction_bits if encoding else None,
            "quantization_bound": encoding.sum_error_bound if encoding else None,
            "limbs": plan.limbs if plan else 1,
            "digit_bits": plan.digit_bits if plan else None,
            "ciphertexts_per_client": server.ciphertexts_per_input,
            "upload_bytes_per_value": upload[next((c for c in clients if c != holder_id), holder_id)] / length,
            "public_context_bytes": context_bytes,
            "client_encrypt_seconds": {"max": max(seconds["encrypt"].values()),
                                       "mean": float(np.mean(list(seconds["encrypt"].values())))},
            "server_add_seconds": seconds["server_add"],
            "key_holder_decrypt_seconds": seconds["decrypt"],
        }
        view = None
        if self.record:
            view = RoundView(round_id, self.name, self.secure, tuple(clients), tuple(sorted(server.included)),
                             {"input": tuple(sorted(dropped))},
                             {s: dict(m) for s, m in server.received.items() if first_round or s != "context"},
                             total.copy(), {k: v for k, v in details.items() if not k.endswith("_seconds")})
        return RoundResult(total, upload, download, included=server.included, details=details, view=view)


class BFVProtocol(HEProtocol):
    """Exact: BFV on fixed-point limbs."""

    name = "he-bfv"
    scheme_name = "bfv"


class CKKSProtocol(HEProtocol):
    """Exact: CKKS on integer-valued fixed-point limbs, rounded after decryption (|limb sum| ≤ 2^45)."""

    name = "he-ckks"
    scheme_name = "ckks"
    default_limbs = 2


class ApproximateCKKSProtocol(HEProtocol):
    """APPROXIMATE: CKKS on the floats themselves; the sum carries CKKS's error."""

    name = "he-ckks-approx"
    scheme_name = "ckks-approx"
    exact = False
