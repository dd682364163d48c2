"""Homomorphic aggregation in one process: key holder, clients and server exchanging wire bytes.

One protocol object is one job: it plays the operator (identities and roster, the key holder
named in it: by default the lowest id), the key holder creates the keys on the first round and
its signed public context is sent once; every later round reuses it. Each round the key holder
opens the session with its own nonce, receives every client's signed ciphertexts through the
server, sums and decrypts them itself. Bytes and seconds are measured per role, the key holder's
download (every client's ciphertexts) included.

Dropouts (``dropout``: a fraction per stage; HE has one, ``input``): a client that leaves never sends
its ciphertexts and is simply left out of the sum, which still needs the job's minimum number of
clients. The key holder leaving is different: nobody else can decrypt, so the round fails cleanly
(``ProtocolAbort``) before any sum exists, and nothing of any client is revealed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from protocols.base import RosteredProtocol, RoundResult
from protocols.encoding import FixedPoint
from protocols.dropouts import check_dropout_fractions, draw_dropouts
from protocols.errors import ParameterError, ProtocolAbort
from protocols.he.limbs import LimbPlan
from protocols.he.roles import HEClient, HEKeyHolder, HEServer
from protocols.he.session import HEOptions, PublicSession
from protocols.minimum import check_min_clients, default_min_clients, require_min_clients
from protocols.transcript import RoundView


class HEProtocol(RosteredProtocol):
    secure = True
    scheme_name: str
    default_limbs: int = 1

    def __init__(self, limbs: int | None = None, fraction_bits: int | None = None, key_holder: int | None = None,
                 min_clients: int | None = None, dropout: Mapping[str, float] | None = None, dropout_seed: int = 0,
                 record: bool = False, ledger: bool = True, ledger_dir: str | Path | None = None):
        super().__init__(record, ledger, ledger_dir)
        self.dropout = check_dropout_fractions(dropout or {}, self.stages)
        self.dropout_seed = dropout_seed
        self.rounds_run = 0
        self.limbs = self.default_limbs if limbs is None else limbs
        if self.limbs < 1:
            raise ParameterError(f"limbs must be at least 1, got {self.limbs}")
        self.fraction_bits = fraction_bits
        self.key_holder_id = key_holder
        self.min_clients = min_clients
        self._session: tuple[HEKeyHolder, HEServer, PublicSession] | None = None
        self._clients_seen_context: set[int] = set()

    def _options(self, clients: int) -> HEOptions:
        """The job's options for ``clients`` clients; m defaults to ⌊2K/3⌋ + 1 of them (protocols/minimum.py)."""
        minimum = default_min_clients(clients) if self.min_clients is None else check_min_clients(self.min_clients, clients)
        return HEOptions(self.scheme_name, clients, self.limbs, self.fraction_bits, minimum)

    def options(self, clients: list[int]) -> dict:
        return self._options(len(clients)).to_json()

    def key_holder(self, clients: list[int]) -> int:
        holder = min(clients) if self.key_holder_id is None else self.key_holder_id
        if holder not in clients:
            raise ParameterError(f"the key holder {holder} is not among the job's clients")
        return holder

    def plan(self, clients: int, bound: float) -> tuple[FixedPoint | None, LimbPlan | None]:
        """Encoding and limbs of a round of ``clients`` clients under the job's scheme (before the job is
        enrolled: a job of that many clients), checkable before any vector exists."""
        options = HEOptions.from_roster(self.roster) if self.roster is not None else self._options(clients)
        return options.plan(clients, bound)

    def prepare(self, clients: int, bound: float) -> None:
        self.plan(clients, bound)

    def _start_session(self) -> tuple[HEKeyHolder, HEServer, PublicSession]:
        holder = HEKeyHolder(self.member(self.roster.key_holder))
        server = HEServer(self.roster)
        public = server.receive_context(holder.public_context)  # each client checks the same signed bytes
        return holder, server, public

    def _aggregate(self, terms, contributions, length, drop):
        clients = sorted(contributions)
        self._roster_for(clients)
        if self._session is None:
            self._session = self._start_session()
        holder, server, public = self._session
        holder_id = holder.id
        require_min_clients(len(clients), holder.min_clients, "the round the server was asked to run")
        encoding, plan = self.plan(len(clients), terms.bound)
        dropped = drop.get("input", frozenset()) | draw_dropouts(clients, self.dropout, self.dropout_seed + self.rounds_run,
                                                                 self.stages)["input"]
        self.rounds_run += 1
        if holder_id in dropped:
            raise ProtocolAbort(f"round {terms.round_id!r}: the key holder {holder_id} dropped out; nobody else can "
                                "decrypt, so the round fails and no client's vector is revealed")
        upload = dict.fromkeys(clients + [holder_id], 0)  # the key holder decrypts even in rounds it sits out
        download = dict.fromkeys(clients + [holder_id], 0)
        seconds = {"encrypt": {}, "server": 0.0, "key_holder": 0.0}
        context_bytes = len(holder.public_context)
        first_round = not self._clients_seen_context  # the public context reaches the server once per session
        upload[holder_id] += context_bytes if first_round else 0
        opening = holder.open_round(terms)
        upload[holder_id] += len(opening)
        setup = server.setup(terms, clients, length, server.receive_open(opening), encoding, plan)
        for c in clients:
            client = HEClient(self.member(c), contributions[c], terms, public, self.ledger_of(c))
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
            seconds["server"] += time.perf_counter() - start
        start = time.perf_counter()
        holder.begin(setup)
        download[holder_id] += len(setup)
        for message in server.inputs():  # the key holder verifies and sums the individual inputs itself
            holder.add(message)
            download[holder_id] += len(message)
        decrypted = holder.finish()
        seconds["key_holder"] = time.perf_counter() - start
        upload[holder_id] += len(decrypted)
        words, included = server.receive_decrypted(decrypted)
        total = encoding.decode(words) if encoding else words.view(np.float64).copy()
        details = {
            **round_details(server, holder_id, holder.min_clients, encoding, plan, context_bytes),
            "upload_bytes_per_value": upload[next((c for c in clients if c != holder_id), holder_id)] / length,
            "key_holder_download_bytes": download[holder_id],
            "client_encrypt_seconds": {"max": max(seconds["encrypt"].values()),
                                       "mean": float(np.mean(list(seconds["encrypt"].values())))},
            "server_seconds": seconds["server"],
            "key_holder_seconds": seconds["key_holder"],
        }
        view = self.view(terms.round_id, clients, included, dropped, server, total, details, first_round)
        return RoundResult(total, upload, download, included=included, details=details, view=view)

    def view(self, round_id: str, clients: list[int], included, dropped, server: HEServer, total: np.ndarray,
             details: dict, with_context: bool = True) -> RoundView | None:
        """What the server saw of a round, when this protocol records (the public context once per session)."""
        if not self.record:
            return None
        return RoundView(round_id, self.name, self.secure, tuple(clients), tuple(sorted(included)),
                         {"input": tuple(sorted(dropped))},
                         {s: dict(m) for s, m in server.received.items() if with_context or s != "context"},
                         total.copy(), {k: v for k, v in details.items() if not k.endswith("_seconds")})


def round_details(server: HEServer, holder_id: int, min_clients: int, encoding: FixedPoint | None,
                  plan: LimbPlan | None, context_bytes: int) -> dict:
    """A round's public parameters for the results JSON, as the server knows them (in process or deployed)."""
    scheme = server.scheme
    return {
        **scheme.describe(),
        "exact": scheme.exact,
        "key_holder": holder_id,
        "min_clients": min_clients,
        "fraction_bits": encoding.fraction_bits if encoding else None,
        "quantization_bound": encoding.sum_error_bound if encoding else None,
        "limbs": plan.limbs if plan else 1,
        "digit_bits": plan.digit_bits if plan else None,
        "ciphertexts_per_client": server.ciphertexts_per_input,
        "public_context_bytes": context_bytes,
    }


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
    """APPROXIMATE: CKKS on the floats themselves; the sum carries CKKS's error.

    That error is also a leak. The key holder's decryption of the sum keeps CKKS's noise, and it goes to the
    server, which holds every ciphertext it forwarded and so the summed ciphertext too: a ciphertext with its
    noisy decryption is what the passive key-recovery attack of Li and Micciancio (Eurocrypt 2021, shown
    against SEAL, which TenSEAL wraps) needs. CKKS is not secure when its decryptions are shared
    (IND-CPA^D) unless the decryptor floods them with noise, which is not built. (TenSEAL's decryption keeps
    only the slots' real parts; whether that alone stops their attack is not established, so the mode is
    treated as exposed.) The integer modes do not leak this way: BFV decrypts exactly, and integer CKKS
    rounds its decryption, which then depends on the sum alone."""

    name = "he-ckks-approx"
    scheme_name = "ckks-approx"
    exact = False
    leak = ("the key holder's decryption of the sum carries CKKS's noise and goes to the server, which holds the "
            "ciphertexts it forwarded; CKKS is not secure when its decryptions are shared (IND-CPA^D: Li & Micciancio, "
            "Eurocrypt 2021, recovered the secret key from such decryptions in SEAL, which TenSEAL wraps), and with "
            "the key the server decrypts every client's input; no noise flooding is built. Use he-ckks (exact integer "
            "CKKS) or he-bfv where the server is not trusted")
