"""The homomorphic schemes behind the he-* protocols, with parameters measured on TenSEAL 0.3.18.

Each scheme says how many slots a ciphertext has, how large a per-slot sum may grow and still
decrypt exactly (``limit``), and how to encrypt, deserialize and decrypt one packed chunk. The
server only ever sees public contexts (asserted) and only adds.

BFV (exact): N = 4096 with the 128-bit-secure 109-bit coefficient modulus [36, 36, 37]; the
plaintext modulus t is a prime ≡ 1 (mod 2N) so that all 4096 slots batch. Additions grow the
noise with the number of clients, and the largest t whose n-ciphertext sums still decrypted
exactly was measured: 60 bits failed at n = 100, 55 bits held at n = 1000 and failed at 10^4,
50 bits held at 10^4. Hence t has min(55, ⌊64 − log2 n⌋) bits (a test re-measures the edge).
Sums are exact integers while |sum| ≤ (t − 1)/2 (TenSEAL decrypts to the centred residue).

CKKS (N = 8192, [60, 40, 40], scale 2^40, 4096 slots): integer-valued inputs summed and rounded
after decryption were exact up to |sum| = 2^50 (error 0.375) and wrong at 2^52 (error 1.5);
the error doubles with each bit, so integer mode enforces |sum| ≤ 2^45 (measured error ≤ 0.03,
a 16× margin to 0.5). The same context without rounding is the approximate mode.

A received public context is trusted for nothing until checked (``Scheme.check_context``): its
scheme, ring degree, coefficient-modulus chain and (BFV) plaintext modulus must be exactly the
ones the job's scheme prescribes, and independently of that the degree and total modulus size must
meet the Homomorphic Encryption Standard's 128-bit table and a BFV plaintext modulus must be a
batching prime of the size the sums need. A context that fails raises UnsafeContextError.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import tenseal as ts

from protocols.errors import MalformedMessageError, ParameterError, ProtocolError, UnsafeContextError

# Homomorphic Encryption Standard (Albrecht et al. 2018), 128-bit classical security, uniform ternary
# secret: the largest total coefficient-modulus size (bits) for each ring degree N.
SECURITY_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)  # deterministic Miller–Rabin below 3.3e24


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def batching_prime(bits: int, degree: int) -> int:
    """The largest prime below 2^bits that is 1 mod 2·degree (so every slot of a BFV plaintext batches)."""
    step = 2 * degree
    candidate = ((1 << bits) - 2) // step * step + 1
    while candidate > step:
        if is_prime(candidate):
            return candidate
        candidate -= step
    raise ParameterError(f"no {bits}-bit batching prime for degree {degree}")


def fingerprint(public_context: bytes) -> bytes:
    return hashlib.sha256(b"secure-afl/he-context" + public_context).digest()


@dataclass(frozen=True)
class ContextParameters:
    """What a loaded TenSEAL context actually holds, read from SEAL's own parameter record."""

    scheme: str  # "bfv" or "ckks"
    degree: int
    total_bits: int  # of the whole coefficient modulus, special prime included (what security depends on)
    plain_modulus: int | None  # BFV only

    @classmethod
    def of(cls, context: Any) -> ContextParameters:
        key_level = context.seal_context().data.key_context_data()
        parms = key_level.parms()
        scheme = {"BFV": "bfv", "CKKS": "ckks"}.get(parms.scheme().name)
        if scheme is None:
            raise UnsafeContextError(f"the HE context uses scheme {parms.scheme()}, neither BFV nor CKKS")
        plain = 2 * key_level.plain_upper_half_threshold() - 1 if scheme == "bfv" else None  # SEAL keeps (t + 1) / 2
        return cls(scheme, parms.poly_modulus_degree(), key_level.total_coeff_modulus_bit_count(), plain)


def check_security(degree: int, total_bits: int) -> None:
    """The HE standard's 128-bit bound on the coefficient modulus for the ring degree."""
    if degree not in SECURITY_128:
        raise UnsafeContextError(f"ring degree N = {degree} is not one of the HE standard's {sorted(SECURITY_128)}")
    if total_bits > SECURITY_128[degree]:
        raise UnsafeContextError(f"a {total_bits}-bit coefficient modulus at N = {degree} is below 128-bit security "
                                 f"(at most {SECURITY_128[degree]} bits)")


def check_plain_modulus(plain: int, degree: int, bits: int) -> None:
    """A BFV plaintext modulus that batches every slot (a prime ≡ 1 mod 2N) and holds ``bits``-bit sums."""
    if not (is_prime(plain) and plain % (2 * degree) == 1):
        raise UnsafeContextError(f"plaintext modulus {plain} is not a batching prime for N = {degree} (prime ≡ 1 mod {2 * degree})")
    if plain.bit_length() != bits:
        raise UnsafeContextError(f"the plaintext modulus has {plain.bit_length()} bits; this job's sums need exactly {bits}")


@dataclass(frozen=True)
class Scheme(ABC):
    """One homomorphic scheme with fixed parameters; subclasses give the TenSEAL calls."""

    slots: ClassVar[int]
    kind: ClassVar[str]  # the SEAL scheme underneath: "bfv" or "ckks"

    @property
    @abstractmethod
    def label(self) -> str:
        """bfv, ckks (integer, exact) or ckks-approx."""

    @property
    @abstractmethod
    def exact(self) -> bool:
        """True when sums are exact integers (then values travel as fixed-point limbs)."""

    @property
    def capacity(self) -> int:
        """Most clients one sum may hold, or 0 where the parameters do not depend on it."""
        return 0

    @property
    @abstractmethod
    def limit(self) -> int:
        """Largest |per-slot sum| that decrypts exactly (integer schemes)."""

    @abstractmethod
    def secret_context(self) -> Any:
        """A fresh context holding a secret key: only the key holder calls this."""

    @abstractmethod
    def encrypt(self, context: Any, values: np.ndarray) -> bytes:
        """One chunk of at most ``slots`` values, serialized."""

    def load(self, context: Any, data: bytes) -> Any:
        """A serialized ciphertext; anything that does not parse raises MalformedMessageError."""
        try:
            return self.vector_from(context, data)
        except (ValueError, RuntimeError) as exc:
            raise MalformedMessageError(f"a {self.label} ciphertext does not parse: {exc}") from exc

    @abstractmethod
    def decrypt(self, vector: Any) -> np.ndarray:
        """int64 sums (integer schemes) or float64 (approximate CKKS)."""

    @abstractmethod
    def describe(self) -> dict:
        """The parameters, for the results JSON."""

    def public_bytes(self, context: Any) -> bytes:
        """The context with its public key only: no secret, relinearisation or Galois keys (adds need none)."""
        return context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                 save_relin_keys=False)

    def load_context(self, data: bytes) -> Any:
        """A received public context: parsed, holding no secret key, and exactly this scheme's parameters."""
        try:
            context = ts.context_from(data)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise MalformedMessageError(f"the HE context does not parse: {exc}") from exc
        if context.has_secret_key():
            raise ProtocolError("the received HE context carries a secret key; refusing to hold it")
        self.check_context(ContextParameters.of(context))
        return context

    def check_context(self, found: ContextParameters) -> None:
        """Refuse a context that is not this scheme's, or that is unsafe on its own terms."""
        if found.scheme != self.kind:
            raise UnsafeContextError(f"the HE context is a {found.scheme.upper()} context, the job's scheme is "
                                     f"{self.label!r} ({self.kind.upper()})")
        check_security(found.degree, found.total_bits)
        if found.plain_modulus is not None:
            check_plain_modulus(found.plain_modulus, found.degree, self.plain_bits)
        expected = (self.degree, sum(self.coefficient_bits), self.expected_plain_modulus)
        if (found.degree, found.total_bits, found.plain_modulus) != expected:
            raise UnsafeContextError(
                f"the HE context has N = {found.degree}, a {found.total_bits}-bit coefficient modulus and plaintext "
                f"modulus {found.plain_modulus}; the job prescribes N = {expected[0]}, {expected[1]} bits, {expected[2]}"
            )


@dataclass(frozen=True)
class BFV(Scheme):
    clients: int = 2
    degree: int = 4096
    coefficient_bits: tuple[int, ...] = (36, 36, 37)
    slots: ClassVar[int] = 4096
    label: ClassVar[str] = "bfv"
    kind: ClassVar[str] = "bfv"
    vector_from = staticmethod(ts.bfv_vector_from)
    exact: ClassVar[bool] = True

    MAX_PLAIN_BITS: ClassVar[int] = 55

    @property
    def plain_bits(self) -> int:
        return min(self.MAX_PLAIN_BITS, math.floor(64 - math.log2(max(self.clients, 1))))

    @property
    def plain_modulus(self) -> int:
        return batching_prime(self.plain_bits, self.degree)

    @property
    def expected_plain_modulus(self) -> int:
        return self.plain_modulus

    @property
    def capacity(self) -> int:
        return self.clients

    @property
    def limit(self) -> int:
        return (self.plain_modulus - 1) // 2

    def secret_context(self):
        return ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=self.degree, plain_modulus=self.plain_modulus,
                          coeff_mod_bit_sizes=list(self.coefficient_bits))

    def encrypt(self, context, values: np.ndarray) -> bytes:
        return ts.bfv_vector(context, values.astype(np.int64).tolist()).serialize()

    def decrypt(self, vector) -> np.ndarray:
        return np.array(vector.decrypt(), dtype=np.int64)

    def describe(self) -> dict:
        return {"scheme": "BFV", "poly_modulus_degree": self.degree, "coeff_mod_bit_sizes": list(self.coefficient_bits),
                "plain_modulus": self.plain_modulus, "plain_modulus_bits": self.plain_bits, "slots": self.slots}


@dataclass(frozen=True)
class CKKS(Scheme):
    integer: bool = True
    degree: int = 8192
    coefficient_bits: tuple[int, ...] = (60, 40, 40)
    scale_bits: int = 40
    slots: ClassVar[int] = 4096
    kind: ClassVar[str] = "ckks"
    plain_bits: ClassVar[None] = None
    expected_plain_modulus: ClassVar[None] = None

    vector_from = staticmethod(ts.ckks_vector_from)
    INTEGER_LIMIT_BITS: ClassVar[int] = 45
    ROUNDING_SLACK: ClassVar[float] = 0.25  # a decrypted integer sum further than this from an integer is refused

    @property
    def label(self) -> str:
        return "ckks" if self.integer else "ckks-approx"

    @property
    def exact(self) -> bool:
        return self.integer

    @property
    def limit(self) -> int:
        return 1 << self.INTEGER_LIMIT_BITS

    def secret_context(self):
        context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=self.degree,
                             coeff_mod_bit_sizes=list(self.coefficient_bits))
        context.global_scale = 2.0**self.scale_bits
        return context

    def encrypt(self, context, values: np.ndarray) -> bytes:
        return ts.ckks_vector(context, values.astype(np.float64).tolist()).serialize()

    def decrypt(self, vector) -> np.ndarray:
        values = np.array(vector.decrypt(), dtype=np.float64)
        if not self.integer:
            return values
        rounded = np.rint(values)
        worst = float(np.max(np.abs(values - rounded))) if values.size else 0.0
        if not worst <= self.ROUNDING_SLACK:
            raise ProtocolError(f"a CKKS integer sum decrypted {worst:.3g} away from an integer: not exact, refused")
        return rounded.astype(np.int64)

    def describe(self) -> dict:
        return {"scheme": "CKKS", "poly_modulus_degree": self.degree, "coeff_mod_bit_sizes": list(self.coefficient_bits),
                "scale_bits": self.scale_bits, "slots": self.slots, "integer": self.integer,
                "integer_limit_bits": self.INTEGER_LIMIT_BITS if self.integer else None}
