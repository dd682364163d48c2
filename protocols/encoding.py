"""Fixed-point encoding of float64 vectors into Z_2^64, shared by every exact protocol.

A value x becomes round(x · 2^f) as a two's-complement 64-bit word; words add modulo 2^64 (numpy
uint64 wraps natively), and the sum decodes as a signed 64-bit integer divided by 2^f. The sum
of n encodings is exact as long as it cannot leave the signed range, which the public bound B on
|x| guarantees when n · (B · 2^f + 1/2) < 2^63. The precision f is therefore a function of
public quantities only (n and B, both declared before any data is touched), never of a
client's data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocols.base import check_vector
from protocols.errors import EncodingError

WORD_BITS = 64
SIGNED_LIMIT = 1 << (WORD_BITS - 1)  # the sum must stay strictly inside ±2^63
MAX_FRACTION_BITS = 62


def fits(clients: int, bound: float, fraction_bits: int) -> bool:
    """True when the sum of ``clients`` encodings of values within ±bound stays in the signed range.

    Each encoding is at most B · 2^f + 1/2 in magnitude (rounding), computed exactly with
    integers and fractions so that no float rounding hides an overflow at the edge.
    """
    from fractions import Fraction

    worst = clients * (Fraction(bound) * (1 << fraction_bits) + Fraction(1, 2))
    return worst < SIGNED_LIMIT


def choose_fraction_bits(clients: int, bound: float) -> int:
    """The largest f whose overflow budget holds for ``clients`` values each within ±``bound``."""
    if clients < 1:
        raise EncodingError(f"the number of clients must be at least 1, got {clients}")
    if not (math.isfinite(bound) and bound > 0):
        raise EncodingError(f"the public bound must be a positive finite number, got {bound}")
    guess = min(MAX_FRACTION_BITS, math.floor(63 - math.log2(clients) - math.log2(bound)))
    f = guess + 1
    while f >= 0 and not (f <= MAX_FRACTION_BITS and fits(clients, bound, f)):
        f -= 1
    if f < 0:
        raise EncodingError(
            f"{clients} clients with values up to {bound:.6g} overflow 64-bit words even without fraction bits; "
            "lower the bound (normalise the features) or aggregate fewer clients per round"
        )
    return f


@dataclass(frozen=True)
class FixedPoint:
    """The encoding of one round: ``fraction_bits`` chosen for ``clients`` values bounded by ``bound``."""

    fraction_bits: int
    bound: float
    clients: int

    @classmethod
    def for_round(cls, clients: int, bound: float, fraction_bits: int | None = None) -> FixedPoint:
        """Automatic precision, or a requested one checked against the overflow budget."""
        if fraction_bits is None:
            return cls(choose_fraction_bits(clients, bound), float(bound), clients)
        best = choose_fraction_bits(clients, bound)
        if not 0 <= fraction_bits <= best:
            raise EncodingError(
                f"fraction_bits={fraction_bits} overflows the sum of {clients} values bounded by {bound:.6g}; "
                f"use at most {best}"
            )
        return cls(fraction_bits, float(bound), clients)

    def __post_init__(self):
        if not fits(self.clients, self.bound, self.fraction_bits):
            raise EncodingError(
                f"fraction_bits={self.fraction_bits} overflows the sum of {self.clients} values bounded by {self.bound:.6g}"
            )

    @property
    def step(self) -> float:
        """The quantization step 2^-f of one value."""
        return math.ldexp(1.0, -self.fraction_bits)

    @property
    def sum_error_bound(self) -> float:
        """Largest difference between the decoded sum and the float sum, per entry: n · 2^-(f+1)."""
        return self.clients * math.ldexp(1.0, -(self.fraction_bits + 1))

    def encode(self, vector: np.ndarray) -> np.ndarray:
        """round(x · 2^f) as uint64 words (two's complement); refuses NaN/Inf and anything beyond the bound."""
        check_vector(vector, self.bound, "the vector to encode")
        scaled = np.ldexp(vector, self.fraction_bits)
        np.rint(scaled, out=scaled)
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, words: np.ndarray) -> np.ndarray:
        """A sum of encodings back to float64 (signed reading of the words, divided by 2^f)."""
        if words.dtype != np.uint64:
            raise EncodingError(f"encoded sums are uint64 words, got {words.dtype}")
        return np.ldexp(words.view(np.int64).astype(np.float64), -self.fraction_bits)

