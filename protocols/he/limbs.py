"""Splitting fixed-point words into limbs that a scheme can sum exactly, and putting sums back.

A scheme sums a slot exactly only while |sum| ≤ Λ (its ``limit``), far below the 2^63 that the
fixed-point encoding may use. A signed 64-bit value v is written in base 2^b,
v = Σ_j d_j · 2^(b·j): the low digits are unsigned b-bit numbers, the top digit carries the sign.
Each limb j is encrypted and summed on its own, and Σ_j D_j · 2^(b·j) (mod 2^64, numpy uint64
arithmetic wraps) is the exact sum because the true sum fits in 64 bits. The digit width is the
largest with n · (2^b − 1) ≤ Λ; with one limb the digit is v itself and n · max|v| ≤ Λ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocols.encoding import FixedPoint, choose_fraction_bits
from protocols.errors import EncodingError


@dataclass(frozen=True)
class LimbPlan:
    limbs: int
    digit_bits: int  # b; with one limb the digit is the whole value
    limit: int  # Λ of the scheme

    @classmethod
    def for_scheme(cls, limbs: int, limit: int, clients: int) -> LimbPlan:
        if limbs < 1:
            raise EncodingError(f"limbs must be at least 1, got {limbs}")
        return cls(limbs, min(63, int(math.log2(limit // clients + 1))), limit)

    def carries(self, clients: int, largest: int) -> bool:
        """True when every limb's sum over ``clients`` values of magnitude ≤ ``largest`` stays within Λ."""
        if self.limbs == 1:
            return clients * largest <= self.limit
        top = (largest >> (self.digit_bits * (self.limbs - 1))) + 1
        return clients * ((1 << self.digit_bits) - 1) <= self.limit and clients * top <= self.limit

    def encoding(self, clients: int, bound: float, fraction_bits: int | None = None) -> FixedPoint:
        """The requested precision if the limbs carry it, else (when none was asked) the largest they carry."""
        best = choose_fraction_bits(clients, bound)
        candidates = [fraction_bits] if fraction_bits is not None else range(best, -1, -1)
        for f in candidates:
            if 0 <= f <= best and self.carries(clients, math.floor(bound * 2.0**f + 0.5)):
                return FixedPoint.for_round(clients, bound, f)
        raise EncodingError(
            f"{self.limbs} limb(s) of this scheme cannot carry {clients} values bounded by {bound:.6g}"
            + (f" at fraction_bits={fraction_bits}; use more limbs or fewer bits" if fraction_bits is not None else "")
        )

    def split(self, words: np.ndarray) -> list[np.ndarray]:
        """uint64 fixed-point words → one int64 digit array per limb."""
        values = words.view(np.int64)
        if self.limbs == 1:
            return [values.copy()]
        mask = (1 << self.digit_bits) - 1
        digits = [(values >> (self.digit_bits * j)) & mask for j in range(self.limbs - 1)]
        digits.append(values >> (self.digit_bits * (self.limbs - 1)))
        return digits

    def join(self, sums: list[np.ndarray]) -> np.ndarray:
        """Per-limb int64 sums → the uint64 words of the total."""
        total = np.zeros(sums[0].shape[0], dtype=np.uint64)
        for j, digit_sum in enumerate(sums):
            total += digit_sum.astype(np.int64).view(np.uint64) << np.uint64(self.digit_bits * j)
        return total
