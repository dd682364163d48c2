"""An explicit, versioned binary format for protocol messages (never pickle).

A message is MAGIC ‖ version ‖ kind ‖ fields. Fields are fixed-width big-endian integers,
length-prefixed byte strings, IEEE float64 and little-endian uint64 arrays. The reader checks
every length against what is left, refuses trailing bytes, and raises MalformedMessageError for
anything it cannot parse, so a hostile peer gets a clear refusal instead of a crash.
"""

from __future__ import annotations

import struct

import numpy as np

from protocols.errors import MalformedMessageError

MAGIC = b"SAFL"
VERSION = 1
WORD = np.dtype("<u8")
_U32 = struct.Struct(">I")


class Writer:
    def __init__(self, kind: int):
        self._parts: list[bytes | memoryview] = [MAGIC, bytes([VERSION, kind])]

    def u8(self, value: int) -> Writer:
        self._parts.append(struct.pack(">B", value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(struct.pack(">I", value))
        return self

    def f64(self, value: float) -> Writer:
        self._parts.append(struct.pack(">d", value))
        return self

    def blob(self, data: bytes) -> Writer:
        self.u32(len(data))
        self._parts.append(bytes(data))
        return self

    def text(self, value: str) -> Writer:
        return self.blob(value.encode())

    def ids(self, values) -> Writer:
        values = list(values)
        self._parts.append(struct.pack(f">I{len(values)}I", len(values), *values))
        return self

    def words(self, array: np.ndarray) -> Writer:
        self.u32(array.shape[0])
        self._parts.append(np.ascontiguousarray(array, dtype=WORD).data)  # joined once in to_bytes, no extra copy
        return self

    def to_bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    def __init__(self, data: bytes, kind: int, name: str):
        self._data = bytes(data)
        self._pos = 0
        self._name = name
        if self._take(len(MAGIC)) != MAGIC:
            raise MalformedMessageError(f"{name}: not a secure-afl protocol message")
        version, found = self._take(2)
        if version != VERSION:
            raise MalformedMessageError(f"{name}: wire version {version}, this build speaks version {VERSION}")
        if found != kind:
            raise MalformedMessageError(f"{name}: expected message kind {kind}, got {found}")

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise MalformedMessageError(f"{self._name}: truncated message")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise MalformedMessageError(f"{self._name}: truncated message")
        value = _U32.unpack_from(self._data, self._pos)[0]
        self._pos += 4
        return value

    def f64(self) -> float:
        return struct.unpack(">d", self._take(8))[0]

    def blob(self) -> bytes:
        return self._take(self.u32())

    def text(self) -> str:
        try:
            return self.blob().decode()
        except UnicodeDecodeError as exc:
            raise MalformedMessageError(f"{self._name}: a text field is not UTF-8") from exc

    def count(self, min_entry_bytes: int) -> int:
        """An entry count, refused when the rest of the message cannot possibly hold that many entries."""
        count = self.u32()
        if count * min_entry_bytes > self.remaining():
            raise MalformedMessageError(f"{self._name}: truncated message")
        return count

    def ids(self) -> list[int]:
        count = self.u32()
        if 4 * count > self.remaining():
            raise MalformedMessageError(f"{self._name}: truncated message")
        values = list(struct.unpack_from(f">{count}I", self._data, self._pos))
        self._pos += 4 * count
        return values

    def words(self) -> np.ndarray:
        """A read-only view into the message (no copy): received vectors are summed, never modified."""
        count = self.u32()
        if 8 * count > self.remaining():
            raise MalformedMessageError(f"{self._name}: truncated message")
        words = np.frombuffer(self._data, dtype=WORD, count=count, offset=self._pos)
        self._pos += 8 * count
        return words

    def end(self) -> None:
        if self.remaining():
            raise MalformedMessageError(f"{self._name}: {self.remaining()} unexpected trailing bytes")
