"""What the deployment adds to the protocols' wire messages: the hello and the round call.

A node's ``NodeHello`` tells the server which roster client it is and the public dimensions of its
features (the server holds no data). A ``RoundCall`` opens a round at a client: the algorithm's public
round spec (name, length, bound, broadcast arrays), from which the client's own application derives
the round's terms and its vector. Both are in the protocols' wire format (kinds 32 and 33); Flower
carries each wire message as one uint8 array, so large ones are chunked like any array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocols.errors import MalformedMessageError
from protocols.terms import RoundTerms, broadcast_digest
from protocols.wire import Reader, Writer
from secure_afl.algorithms.base import RoundSpec

PAYLOAD = "payload"  # the record that carries wire messages, by name


@dataclass(frozen=True)
class NodeHello:
    client: int  # the node's roster id (its partition)
    backbone_dim: int
    feature_dim: int
    KIND = 32

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).u32(self.client).u32(self.backbone_dim).u32(self.feature_dim).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeHello:
        r = Reader(data, cls.KIND, "node hello")
        msg = cls(r.u32(), r.u32(), r.u32())
        r.end()
        return msg


@dataclass(frozen=True)
class RoundCall:
    """A round's public spec as the server announces it; the layout stays with the server (transcript only)."""

    name: str
    length: int
    bound: float
    broadcast: Mapping[str, np.ndarray]  # float64 arrays
    KIND = 33

    @classmethod
    def of(cls, spec: RoundSpec) -> RoundCall:
        return cls(spec.name, spec.length, spec.bound, dict(spec.broadcast))

    def spec(self) -> RoundSpec:
        return RoundSpec(self.name, self.length, self.bound, self.broadcast)

    def to_bytes(self) -> bytes:
        w = Writer(self.KIND).text(self.name).u32(self.length).f64(self.bound).u32(len(self.broadcast))
        for name in sorted(self.broadcast):
            array = np.ascontiguousarray(self.broadcast[name], dtype=np.float64)
            w.text(name).ids(array.shape).words(array.reshape(-1).view(np.uint64))
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundCall:
        r = Reader(data, cls.KIND, "round call")
        name, length, bound, broadcast = r.text(), r.u32(), r.f64(), {}
        for _ in range(r.count(12)):
            key, shape, words = r.text(), tuple(r.ids()), r.words()
            if int(np.prod(shape)) != words.shape[0]:
                raise MalformedMessageError(f"round call: broadcast {key!r} has shape {shape} but {words.shape[0]} values")
            broadcast[key] = words.view(np.float64).reshape(shape).copy()
        r.end()
        return cls(name, length, bound, broadcast)


def round_terms(spec: RoundSpec) -> RoundTerms:
    """What a secure protocol binds a round to: its name, public bound and the digest of its broadcast."""
    return RoundTerms(spec.name, spec.bound, broadcast_digest(spec.broadcast))
