"""Mask expansion: a 32-byte seed → a stream of 64-bit words, by AES-256 in counter mode.

Every seed is used once per session (self-mask seeds are fresh; pairwise seeds are derived with
the session id as salt), so the all-zero initial counter block is safe. Words are read
little-endian.

A client adds one mask per neighbour to a vector of millions of words. Expanding each mask in
full and then adding it streams every mask through main memory twice; instead ``apply`` walks
the vector in cache-sized chunks and, for each chunk, advances every seed's AES-CTR stream into
one small reused buffer and adds or subtracts it at once. The vector is read and written once
in total and the keystream never leaves the cache (1.7× faster than mask-by-mask for 20 masks of
832k words on the development CPU; see benchmarks/masking_cost.py), and the work is spread over
the cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
WORD = np.dtype("<u8")
CHUNK_WORDS = 1 << 14  # 128 KiB of keystream: fits in L2 beside the vector chunk
_BLOCK = 16


def keystream(key: bytes, nonce: bytes, nbytes: int) -> bytes:
    """The raw AES-CTR keystream (the encryption of zeros); exposed so it can be checked against NIST vectors."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


def _stream(seed: bytes, first_word: int):
    """The AES-CTR stream of ``seed`` positioned at word ``first_word`` (even: one block is two words)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seeds are {SEED_BYTES} bytes, got {len(seed)}")
    counter = (first_word // 2).to_bytes(_BLOCK, "big")  # CTR increments the whole 128-bit block big-endian
    return Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor()


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class MaskExpander:
    """Adds and subtracts PRG(seed) masks to uint64 vectors of one fixed length.

    The vector is cut into one contiguous range per thread; each thread starts every seed's
    counter at its range's first block, so the words are the same as a single pass would give.
    AES (OpenSSL) and numpy release the GIL, so the threads use every core.
    """

    def __init__(self, length: int, chunk_words: int = CHUNK_WORDS, threads: int | None = None):
        self.length = length
        self.chunk = max(2, min(chunk_words, length) // 2 * 2)  # whole AES blocks
        threads = threads or default_threads()
        per_thread = max(self.chunk, -(-length // threads))
        per_thread += per_thread % 2
        self._ranges = [(start, min(length, start + per_thread)) for start in range(0, length, per_thread)]

    def apply(self, vector: np.ndarray, plus: Sequence[bytes] = (), minus: Sequence[bytes] = ()) -> None:
        """vector += Σ PRG(plus) − Σ PRG(minus)  (mod 2^64), in place."""
        if vector.dtype != np.uint64 or vector.shape != (self.length,):
            raise ValueError(f"masks apply to uint64 vectors of length {self.length}")
        signed = [(seed, np.add) for seed in plus] + [(seed, np.subtract) for seed in minus]
        if len(self._ranges) == 1:
            self._apply_range(vector, *self._ranges[0], signed)
            return
        with ThreadPoolExecutor(len(self._ranges)) as pool:
            for done in [pool.submit(self._apply_range, vector, start, stop, signed) for start, stop in self._ranges]:
                done.result()

    def _apply_range(self, vector: np.ndarray, start: int, stop: int, signed) -> None:
        zeros = bytes(8 * self.chunk)
        buffer = bytearray(8 * self.chunk + _BLOCK)  # update_into wants room for one extra block
        words = np.frombuffer(buffer, dtype=WORD, count=self.chunk)
        streams = [(_stream(seed, start), combine) for seed, combine in signed]
        for offset in range(start, stop, self.chunk):
            size = min(self.chunk, stop - offset)
            segment = vector[offset : offset + size]
            head = zeros if size == self.chunk else zeros[: 8 * size]
            for stream, combine in streams:
                stream.update_into(head, buffer)
                combine(segment, words[:size], out=segment)

    def expand(self, seed: bytes) -> np.ndarray:
        """PRG(seed) as a new uint64 array."""
        out = np.zeros(self.length, dtype=np.uint64)
        self.apply(out, plus=[seed])
        return out
