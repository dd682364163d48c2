"""The case: which run and which server, producing a transcript — and, kept apart, the ground truth.

A case is a run configuration plus the server's behaviour. ``honest`` runs the whole job as
``secure-afl run`` does, recording the transcript. ``retry`` plays the curious server of the
difference attack: it runs the job's first aggregation once with every client, then again (the
same statistic, the same broadcast) once per victim, each time with that victim dropping out at
the input stage through the protocol's own dropout path, and stops there. Under a secure protocol
the clients' contribution ledgers (protocols/ledger.py) refuse every repeat, typed
(``StatisticReusedError``); the case records each refusal and the transcript holds the first round
only. ``defended=False`` gives the clients no ledger: the clients before the defence, kept only to
demonstrate the attack it stops (the plaintext protocol has no client side to defend: its server
reads every vector anyway).

Ground truth reaches only the evaluator, through ``GroundTruth``: the partition, labels and
features the configuration re-derives on a machine that holds the data (the same configuration
gives the same clients), plus the true vectors of the victims the case itself recorded. It is
built from the full configuration, including the partition seed the transcript deliberately
leaves out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocols import StatisticReusedError, broadcast_digest
from protocols.base import RosteredProtocol
from protocols.transcript import Transcript, TranscriptWriter
from secure_afl.config import RunConfig
from secure_afl.data.datasets import Dataset
from secure_afl.errors import ConfigError
from secure_afl.runner import (
    Features, PlaintextAggregationWarning, RunPlan, Timer, build_algorithm, features_knowledge, load_features, plan_run,
    results_document, train,
)
from secure_afl.statistics import packed_statistics

BEHAVIOURS = ("honest", "retry")


@dataclass(frozen=True)
class GroundTruth:
    """What the evaluator compares reconstructions with; never handed to an attack."""

    dataset: Dataset
    labels: np.ndarray  # training labels
    client_indices: list[np.ndarray]  # into the training split
    num_classes: int
    x: np.ndarray  # mapped features the statistics are built from (float64, N × d)
    test_x: np.ndarray
    backbone: np.ndarray  # backbone features before the public map (N × d_b)
    test_backbone: np.ndarray
    test_labels: np.ndarray
    contributions: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (round, client) → true vector
    sent_indices: list[np.ndarray] | None = None  # the rows each client used (None: all it holds)

    @classmethod
    def from_features(cls, plan: RunPlan, features: Features, contributions: dict | None = None) -> GroundTruth:
        data = features.data
        return cls(plan.dataset, plan.train_y, plan.client_indices, plan.dataset.num_classes,
                   data.train_x.double().cpu().numpy(), data.test_x.double().cpu().numpy(),
                   np.asarray(features.train_raw, dtype=np.float64), np.asarray(features.test_raw, dtype=np.float64),
                   plan.test_y, dict(contributions or {}), plan.sent_indices)

    @classmethod
    def rebuild(cls, config: RunConfig, progress: bool = False) -> GroundTruth:
        """The truth of a run from its configuration alone (for a saved transcript)."""
        plan = _quiet_plan(config)
        features = load_features(plan, Timer(), progress)
        return cls.from_features(plan, features)

    @classmethod
    def without_job(cls, dataset: Dataset, backbone: np.ndarray) -> GroundTruth:
        """The truth of a data set no AFL job can run on (no test split): its training images and their true
        backbone features, all held by one owner (there is no partition and no public map, so the statistics'
        rows are the backbone features themselves). Only the ORACLE image stage is scored against it."""
        labels = dataset.labels(dataset.train)
        features = np.asarray(backbone, dtype=np.float64)
        empty = np.zeros((0, features.shape[1]))
        return cls(dataset, labels, [np.arange(len(labels))], dataset.num_classes, features, empty, features, empty,
                   np.zeros(0, dtype=np.int64))

    def client_of(self) -> np.ndarray:
        """Training sample → the client holding it."""
        owner = np.empty(len(self.labels), dtype=np.int64)
        for client, indices in enumerate(self.client_indices):
            owner[indices] = client
        return owner

    def cell_sizes(self) -> np.ndarray:
        """(clients, classes): how many samples of each class each client holds."""
        sizes = np.zeros((len(self.client_indices), self.num_classes), dtype=np.int64)
        np.add.at(sizes, (self.client_of(), self.labels), 1)
        return sizes

    def singletons(self) -> np.ndarray:
        """Training samples alone in their class on their client."""
        return np.flatnonzero(self.cell_sizes()[self.client_of(), self.labels] == 1)

    def contribution(self, round_name: str, client: int, layout: dict) -> np.ndarray | None:
        """The client's true vector for a round: recorded by the case, or rebuilt for statistics of X."""
        if (round_name, client) in self.contributions:
            return self.contributions[(round_name, client)]
        if layout.get("kind") == "statistics" and layout.get("rows") == "x":
            return self.packed([client])
        return None

    def packed(self, clients) -> np.ndarray:
        """The packed statistics of X over the rows these clients used (what they send, or its sum)."""
        used = self.client_indices if self.sent_indices is None else self.sent_indices
        rows = np.concatenate([used[k] for k in clients])
        return packed_statistics(self.x[rows], self.labels[rows], self.num_classes)

    def images(self, samples: np.ndarray, size: int = 64) -> np.ndarray:
        """uint8 (B, H, W, 3) pixels of training samples, for pictures."""
        pool = self.dataset.pools[self.dataset.train.pool]
        return pool.read(self.dataset.train.indices[np.asarray(samples)], size).permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class CaseRun:
    transcript: Transcript
    truth: GroundTruth
    results: dict  # the run's results document (the retry case reports its rounds only)


@dataclass(frozen=True)
class Case:
    config: RunConfig
    behaviour: str = "honest"
    victims: tuple[int, ...] = (0,)  # for ``retry``: who drops out of the repeated aggregation
    defended: bool = True  # False: clients without a contribution ledger (only to demonstrate the difference attack)

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ConfigError(f"unknown server behaviour {self.behaviour!r}; choose one of {', '.join(BEHAVIOURS)}")
        if self.behaviour == "retry":
            if not self.victims or len(set(self.victims)) != len(self.victims):
                raise ConfigError("the retrying server needs distinct victims")
            bad = [v for v in self.victims if not 0 <= v < self.config.clients]
            if bad:
                raise ConfigError(f"victims {bad} are not clients of this run (ids 0 … {self.config.clients - 1})")

    def run(self, transcript: str | Path, overwrite: bool = False, progress: bool = False) -> CaseRun:
        plan = plan_run(self.config, record=True)
        if isinstance(plan.protocol, RosteredProtocol):
            plan.protocol.ledger = self.defended  # before the first round, so no client has a ledger yet
        timer = Timer()
        features = load_features(plan, timer, progress)
        contributions: dict[tuple[str, int], np.ndarray] = {}
        with TranscriptWriter(transcript, features_knowledge(plan, features), overwrite) as writer:
            if self.behaviour == "honest":
                training = train(plan, features, timer, writer, progress=progress)
                results = results_document(plan, features, training, timer)
            else:
                results = self._retry(plan, features, writer, contributions)
        truth = GroundTruth.from_features(plan, features, contributions)
        return CaseRun(Transcript.load(transcript), truth, results)

    def _retry(self, plan: RunPlan, features: Features, writer: TranscriptWriter, contributions: dict) -> dict:
        """The job's first round, then the same round again once per victim, who drops at the input stage; a repeat
        the clients refuse is recorded (round, victim, the typed error) and leaves nothing in the transcript."""
        server, clients = build_algorithm(plan, features)
        spec = server.next_round()
        asked = sorted(clients) if spec.participants is None else sorted(spec.participants)
        missing = [v for v in self.victims if v not in asked]
        if missing:
            raise ConfigError(f"victims {missing} are not asked in the first round")
        vectors = {k: clients[k].contribute(spec) for k in asked}
        rounds, refusals = [], []

        def aggregate(drop: dict) -> None:
            result = plan.protocol.aggregate(spec.name, vectors, spec.bound, drop=drop,
                                             broadcast_digest=broadcast_digest(spec.broadcast))
            writer.write_round(result.view, spec.public(), spec.broadcast)
            rounds.append({"round": spec.name, "included": sorted(result.included)})

        aggregate({})
        for victim in self.victims:
            try:
                aggregate({"input": [victim]})
            except StatisticReusedError as exc:
                refusals.append({"round": spec.name, "victim": victim, "error": type(exc).__name__, "message": str(exc)})
        for victim in self.victims:
            contributions[(spec.name, victim)] = vectors[victim]
        return {"behaviour": "retry", "victims": list(self.victims), "defended": self.defended, "rounds": rounds,
                "refusals": refusals}


def _quiet_plan(config: RunConfig) -> RunPlan:
    with warnings.catch_warnings():  # rebuilding truth runs no protocol
        warnings.simplefilter("ignore", PlaintextAggregationWarning)
        return plan_run(config)

