"""Shamir secret sharing over the prime field of p = 2^521 − 1, for 32-byte secrets.

The field is far larger than any secret we share (mask seeds and X25519 private keys, 256 bits),
so a secret is an element of the field without reduction, and ``t`` shares of a degree t−1
polynomial reconstruct it while t−1 reveal nothing. Coefficients come from ``secrets``.
Share x-coordinates are the holders' client ids + 1 (never 0, where the secret sits).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable

from protocols.errors import MalformedMessageError, ThresholdError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8): one field element, big-endian
SECRET_BYTES = 32


def split(secret: bytes, holders: Iterable[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` for each holder id (x = id + 1), any ``threshold`` of which reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    holders = list(holders)
    if len(set(holders)) != len(holders) or any(h < 0 for h in holders):
        raise ValueError("share holders must be distinct non-negative ids")
    if not 1 <= threshold <= len(holders):
        raise ThresholdError(f"threshold {threshold} needs between 1 and {len(holders)} holders")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for holder in holders:
        x, y = holder + 1, 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[holder] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def share_value(share: bytes) -> int:
    if len(share) != SHARE_BYTES:
        raise MalformedMessageError(f"a share is {SHARE_BYTES} bytes, got {len(share)}")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise MalformedMessageError("a share is not an element of the field")
    return value


class Reconstructor:
    """Lagrange interpolation at 0, caching the coefficients of each holder set.

    With a complete neighbour graph the server reconstructs every secret from the same first t
    holders, so the O(t²) coefficients are computed once per round instead of once per secret.
    """

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._coefficients: dict[tuple[int, ...], list[int]] = {}

    def _lagrange(self, holders: tuple[int, ...]) -> list[int]:
        """λ_i = Π_j x_j / (x_i · Π_{j≠i} (x_j − x_i)); the x are small, so the products are plain
        integers reduced once, and all t denominators are inverted together (Montgomery's trick)."""
        if holders not in self._coefficients:
            xs = [h + 1 for h in holders]
            numerator = math.prod(xs) % PRIME
            denominators = [xi * math.prod(xj - xi for xj in xs if xj != xi) % PRIME for xi in xs]
            prefix = [1]
            for d in denominators:
                prefix.append(prefix[-1] * d % PRIME)
            inverse = pow(prefix[-1], -1, PRIME)
            coefficients = [0] * len(xs)
            for i in range(len(xs) - 1, -1, -1):
                coefficients[i] = numerator * inverse * prefix[i] % PRIME
                inverse = inverse * denominators[i] % PRIME
            self._coefficients[holders] = coefficients
        return self._coefficients[holders]

    def reconstruct(self, shares: dict[int, bytes]) -> bytes:
        """The secret from any ``threshold`` of the given shares (holder id → share)."""
        if len(shares) < self.threshold:
            raise ThresholdError(f"{len(shares)} shares cannot reconstruct a secret shared with threshold {self.threshold}")
        holders = tuple(sorted(shares)[: self.threshold])
        secret = 0
        for holder, coefficient in zip(holders, self._lagrange(holders)):
            secret = (secret + coefficient * share_value(shares[holder])) % PRIME
        if secret >> (8 * SECRET_BYTES):
            raise ThresholdError("the shares do not interpolate to a 32-byte secret (inconsistent shares)")
        return secret.to_bytes(SECRET_BYTES, "big")
