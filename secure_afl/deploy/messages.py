"""What the deployment adds to the protocols' wire messages: the hello, the round call, personalization.

A node's ``NodeHello`` tells the server which roster client it is and the public dimensions of its
features (the server holds no data). A ``RoundCall`` opens a round at a client: the algorithm's public
round spec (name, length, bound, broadcast arrays), from which the client's own application derives
the round's terms and its vector. After the rounds of a personalizing algorithm (APFL) the server sends
each site the global model (``ModelBroadcast``) and the site answers with its ``PersonalEvaluation``.
All are in the protocols' wire format (kinds 32 to 35); Flower carries each wire message as one uint8
array, so large ones are chunked like any array.
"""

from __future__ import annotations

import json
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
        w = Writer(self.KIND).text(self.name).u32(self.length).f64(self.bound)
        return _write_arrays(w, self.broadcast).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundCall:
        r = Reader(data, cls.KIND, "round call")
        name, length, bound = r.text(), r.u32(), r.f64()
        broadcast = _read_arrays(r, "round call: broadcast")
        r.end()
        return cls(name, length, bound, broadcast)


def _write_arrays(w: Writer, arrays: Mapping[str, np.ndarray]) -> Writer:
    """Named float64 arrays, by name: count, then name, shape and the values' bits each."""
    w.u32(len(arrays))
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name], dtype=np.float64)
        w.text(name).ids(array.shape).words(array.reshape(-1).view(np.uint64))
    return w


def _read_arrays(r: Reader, what: str) -> dict[str, np.ndarray]:
    arrays = {}
    for _ in range(r.count(12)):
        key, shape, words = r.text(), tuple(r.ids()), r.words()
        if int(np.prod(shape)) != words.shape[0]:
            raise MalformedMessageError(f"{what} {key!r} has shape {shape} but {words.shape[0]} values")
        arrays[key] = words.view(np.float64).reshape(shape).copy()
    return arrays


@dataclass(frozen=True)
class ModelBroadcast:
    """The global model after the job's last round, sent to every site for its personalization (APFL): the
    predictor's state (``state()``: a JSON description and float64 arrays), what the results' model file holds."""

    meta: Mapping[str, object]
    arrays: Mapping[str, np.ndarray]
    KIND = 34

    def to_bytes(self) -> bytes:
        return _write_arrays(Writer(self.KIND).text(json.dumps(self.meta, sort_keys=True)), self.arrays).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelBroadcast:
        r = Reader(data, cls.KIND, "model broadcast")
        try:
            meta = json.loads(r.text())
        except ValueError as exc:
            raise MalformedMessageError(f"model broadcast: its description is not JSON ({exc})") from exc
        arrays = _read_arrays(r, "model broadcast: array")
        r.end()
        if not isinstance(meta, dict):
            raise MalformedMessageError("model broadcast: its description is not a JSON object")
        return cls(meta, arrays)


@dataclass(frozen=True)
class PersonalEvaluation:
    """What a site reveals of its personalized model: the accuracy on its own held-out rows and their number, as the
    in-process results hold them per client; ``withheld`` under DP (both are then absent: no noise covers them)."""

    client: int
    withheld: bool
    held_out: int  # 0 when withheld
    accuracy: float  # NaN when withheld or without held-out rows
    KIND = 35

    def to_bytes(self) -> bytes:
        return Writer(self.KIND).u32(self.client).u8(int(self.withheld)).u32(self.held_out).f64(self.accuracy).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PersonalEvaluation:
        r = Reader(data, cls.KIND, "personal evaluation")
        client, withheld, held_out, accuracy = r.u32(), r.u8(), r.u32(), r.f64()
        r.end()
        if withheld not in (0, 1) or not (np.isnan(accuracy) or 0.0 <= accuracy <= 1.0) \
                or (held_out == 0) != np.isnan(accuracy):
            raise MalformedMessageError(f"personal evaluation: accuracy {accuracy} of {held_out} rows (withheld "
                                        f"{withheld}) is not an evaluation")
        return cls(client, bool(withheld), held_out, accuracy)


def round_terms(spec: RoundSpec) -> RoundTerms:
    """What a secure protocol binds a round to: its name, public bound and the digest of its broadcast."""
    return RoundTerms(spec.name, spec.bound, broadcast_digest(spec.broadcast))
