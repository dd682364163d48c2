"""The shape every federated algorithm takes: a server that asks for rounds of sums, clients that answer.

An algorithm is a sequence of aggregation rounds. Before each round the server publishes a
``RoundSpec`` (what vector it wants, its length, the public bound on its entries, whatever state
it broadcasts, and the public layout of the vector: which slice holds what, recorded in
transcripts so that an attack knows what a vector means); every client answers with one flat
float64 vector; a protocol sums them; the server consumes the sum. Keeping client and server apart lets the same code run in the
in-process simulation and, later, across machines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RoundSpec:
    name: str
    length: int
    bound: float  # public: every entry of every client's vector satisfies |v_i| ≤ bound
    broadcast: Mapping[str, np.ndarray] = field(default_factory=dict)
    participants: frozenset[int] | None = None  # clients asked to contribute; None: every client
    layout: Mapping[str, object] = field(default_factory=dict)  # public description of the vector's slices

    def public(self) -> dict:
        """What the round announces, as recorded in a transcript (the broadcast arrays travel beside it)."""
        return {"name": self.name, "length": self.length, "bound": self.bound, "layout": dict(self.layout),
                "participants": None if self.participants is None else sorted(self.participants),
                "broadcast": sorted(self.broadcast)}

    @property
    def broadcast_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.broadcast.values())


class AlgorithmClient(ABC):
    """One client's side: its private data stay inside; only ``contribute`` output leaves."""

    @abstractmethod
    def contribute(self, spec: RoundSpec) -> np.ndarray:
        """The flat float64 vector this client adds to the round's sum."""


class AlgorithmServer(ABC):
    """The server's side: it only ever sees sums."""

    @abstractmethod
    def next_round(self) -> RoundSpec | None:
        """The next round to run, or None when training is done."""

    @abstractmethod
    def receive(self, spec: RoundSpec, total: np.ndarray) -> None:
        """Consume the sum of all clients' vectors for ``spec``."""

    @abstractmethod
    def model(self) -> "LinearModel":
        """The trained model, broadcast to clients at the end."""


@dataclass(frozen=True)
class LinearModel:
    """Scores = X W; the predicted class is the arg-max."""

    weights: np.ndarray  # (d, C) float64

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(np.asarray(features, dtype=np.float64) @ self.weights, axis=1)

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        if len(labels) == 0:
            return float("nan")
        return float(np.mean(self.predict(features) == np.asarray(labels)))

    def relative_difference(self, other: LinearModel) -> float:
        return float(np.max(np.abs(self.weights - other.weights)) / np.max(np.abs(other.weights)))

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able description, arrays): what a saved model file holds (secure_afl/model.py)."""
        return {}, {"weights": self.weights}

    @classmethod
    def from_state(cls, meta: dict, arrays: Mapping[str, np.ndarray]) -> LinearModel:
        return cls(np.asarray(arrays["weights"], dtype=np.float64))


@dataclass(frozen=True)
class Algorithm:
    """Everything the runner needs to know of one algorithm, declared in the algorithm's own module and
    registered once (secure_afl/algorithms/registry.py), so that the runner reads straight through and a new
    algorithm touches only its module and one registration line.

    ``job`` below is whatever ``configure`` returns (the algorithm's own configuration); ``data`` is the
    runner's ``FederatedData`` (mapped features, labels, who holds which rows); ``features`` its ``Features``.
    """

    name: str
    configure: Callable[[Any], Any]  # RunConfig → job; raises ConfigError for combinations it cannot run
    build: Callable[[Any, Any, int, float], tuple[AlgorithmServer, dict[int, AlgorithmClient]]]
    # (job, data, the largest client size the bounds allow, the feature norm bound R) → server, clients
    options: tuple[str, ...] = ()  # RunConfig fields that apply to this algorithm (and are refused for the others)
    rounds: Callable[[Any], int] = lambda config: 1  # RunConfig → the aggregation rounds it asks for
    clients_per_round: Callable[[Any], int] | None = None  # RunConfig → P when a round samples clients (None: all)
    validate: Callable[[Any], None] | None = None  # RunConfig → None; refusals clearer than the option scope's
    local_map: Callable[[Any], Any] | None = None  # RunConfig → a second public FeatureMap whose features stay local
    reference: Callable[[Any, Any, np.ndarray, int, float], Any] | None = None
    # (job, pooled features, labels, classes, R) → the same algorithm trained centrally; None: no closed form
    personalize: Callable[[Any, AlgorithmServer, dict], dict] | None = None  # local post-processing, nothing sent
    personalize_client: Callable[[Any, AlgorithmClient, Any], Any] | None = None
    # (job, one client, the global model) → that client's personalized model, when it needs nothing else of the
    # server: what a deployed site runs itself (secure_afl/deploy/client_app.py); None: not deployable
    report: Callable[[Any, AlgorithmServer, dict, Any], dict] | None = None  # (job, server, clients, features)
    # → extra metrics; a deployed job's operator passes clients None (its sites keep their own counts)
    history: bool = False  # record the global test accuracy after every round (iterative algorithms)
    model_type: type | None = None  # the class of ``server.model()``: its ``state``/``from_state`` save and load it
    sample_rows: Callable[[dict, Mapping[str, np.ndarray], dict, np.ndarray], np.ndarray] | None = None
    # (public config, a round's broadcast, its layout, input rows) → each sample's row in the space that round's
    # statistics live in (a layered model's hidden layer), for scoring attacks there; None: only the inputs' space
    inputs: str = "features"  # what clients train on: "features" (backbone features through the public feature
    # map) or "pixels" (normalised 32 px pixel rows, algorithms/convnet.py: a model trained end to end, no backbone)
