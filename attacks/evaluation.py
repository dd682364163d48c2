"""The evaluator: reconstructions against ground truth, with the attack's threshold and a baseline beside every figure.

Targets are defined by the ground truth, not by what the attack returned, so an attack that finds
nothing (or cannot run) scores zero on the same targets:

- ``singletons``: training samples alone in their class on their client;
- ``samples``: every training sample;
- ``cells``: every (client, class) cell holding at least one sample;
- ``clients``: every client (its exact class counts);
- ``victims``: every client left out of an aggregate of a statistic that was also aggregated with it.

Feature reconstructions are matched to the targets of their client (one-to-one, Hungarian matching
on cosine, ``scipy.optimize.linear_sum_assignment``; by cell where the attack names the class) and
scored by cosine in their own feature space. Identification follows breaching's image
identifiability: the threat model grants the attacker a candidate pool that contains the target —
the data set's whole training split, in the same feature space — and a target is identified when
the reconstruction's nearest neighbour (cosine) in that pool is the target itself.

Baselines guess without the transcript: a target's feature is guessed as the mean feature of its
class over public images (the test split, disjoint from every client's data, given the true
label); counts as an even split of the training set; a victim's vector as the aggregate divided by
the number of clients in it (what secure aggregation intends the server to learn).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from attacks.base import Attack, AttackOutput, Reconstruction, ServerView
from attacks.case import GroundTruth
from attacks.statistics.difference import same_statistic
from secure_afl.algorithms.deepafl import configure as deepafl_config
from secure_afl.algorithms.deepafl import LowRank, layer_features
from secure_afl.algorithms.registry import algorithm
from secure_afl.config import RunConfig

TARGETS = {
    "singletons": "training samples alone in their class on their client",
    "samples": "every training sample",
    "cells": "every (client, class) cell holding at least one sample",
    "clients": "every client (exact class counts)",
    "victims": "every client left out of an aggregate of a statistic that was also aggregated with it",
}
IDENTIFICATION = ("nearest neighbour by cosine among the whole training split ({pool} samples) in the "
                  "reconstruction's feature space; the attacker is assumed to hold a candidate pool that contains "
                  "the target")
SIZE_BUCKETS = ((1, 1), (2, 5), (6, 20), (21, 50), (51, 100), (101, 200), (201, 10**9))


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-300)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((_unit(a) @ _unit(b).T)[0, 0])


def _bucket(size: int) -> str:
    low, high = next(b for b in SIZE_BUCKETS if b[0] <= size <= b[1])
    return str(low) if low == high else (f"{low}-{high}" if high < 10**9 else f">{low - 1}")


class Spaces:
    """Training and public (test) rows of every feature space a reconstruction may live in."""

    def __init__(self, truth: GroundTruth, view: ServerView):
        self.truth, self.view = truth, view
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "x": (truth.x, truth.test_x), "backbone": (truth.backbone, truth.test_backbone)}
        self._unit_train: dict[str, np.ndarray] = {}

    def rows(self, space: str) -> tuple[np.ndarray, np.ndarray]:
        if space not in self._rows:
            kind, _, layer = space.partition("/")
            if kind == "phi" and layer.isdigit():
                self._rows[space] = tuple(self._deepafl_layer(rows, int(layer)) for rows in (self.truth.x, self.truth.test_x))
            else:
                self._rows[space] = self._replayed(space)
        return self._rows[space]

    def _replayed(self, space: str) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's row in a hidden layer's space, replayed by the algorithm (its registry's ``sample_rows``)
        with what the round that lives there broadcast (public, in the transcript)."""
        replay = algorithm(self.view.config["algorithm"]).sample_rows
        entry = next((e for e in self.view.rounds() if f"{e.spec.get('layout', {}).get('rows')}/"
                      f"{e.spec.get('layout', {}).get('layer')}" == space), None)
        if replay is None or entry is None:
            raise KeyError(f"no ground truth for feature space {space!r}")
        return tuple(replay(self.view.config, entry.broadcast, entry.spec["layout"], rows)
                     for rows in (self.truth.x, self.truth.test_x))

    def _deepafl_layer(self, x: np.ndarray, layer: int) -> np.ndarray:
        """Φ_layer of rows of X, replayed with the Ω_t the server broadcast (public, in the transcript)."""
        config = deepafl_config(RunConfig(**self.view.config))  # the partition fields it lacks play no part
        omegas = {entry.spec["layout"].get("layer"): LowRank(entry.broadcast["omega_left"], entry.broadcast["omega_right"])
                  for entry in self.view.rounds() if "omega_left" in entry.broadcast}
        scale = next(entry.spec["layout"]["scale"] for entry in self.view.rounds()
                     if entry.spec.get("layout", {}).get("rows") == "phi")
        residuals = [omegas[t + 1] for t in range(layer)]
        *_, phi = layer_features(config, scale, x, residuals)
        return phi.numpy()

    def unit_train(self, space: str) -> np.ndarray:
        if space not in self._unit_train:
            self._unit_train[space] = _unit(self.rows(space)[0])
        return self._unit_train[space]

    def nearest(self, space: str, values: np.ndarray) -> np.ndarray:
        """Index of each value's nearest training row by cosine."""
        return np.argmax(_unit(values) @ self.unit_train(space).T, axis=1)

    def public_class_means(self, space: str) -> np.ndarray:
        test = self.rows(space)[1]
        return np.stack([test[self.truth.test_labels == c].mean(axis=0) if np.any(self.truth.test_labels == c)
                         else np.zeros(test.shape[1]) for c in range(self.truth.num_classes)])


@dataclass
class Score:
    target: tuple  # (client, sample) for features; (client, label) for cells; (client,) for clients / victims
    score: float
    identified: bool | None
    round: str
    nearest: int | None = None  # training sample the reconstruction identifies (features)
    certified: bool = False


def evaluate(attack: Attack, output: AttackOutput, view: ServerView, truth: GroundTruth | None) -> dict:
    """The attack's report: applicability, threat model, threshold, targets, metrics, baseline, per target."""
    report = {
        "attack": attack.name,
        "applicable": output.applicable,
        "reason": output.reason,
        "threat_model": attack.threat_model,
        "metric": attack.metric,
        "threshold": attack.threshold,
        "targets": TARGETS[attack.targets],
        "rounds": output.rounds,
        "seconds": output.seconds,
        "reconstructions": _inventory(output.items),
    }
    if truth is None:
        report["scored"] = False
        report["metrics"] = {"targets": None, "recovered_fraction": None, "identified_fraction": None}
        return report
    scorer = _Scorer(attack, view, truth)
    targets, scores, baseline = scorer.run(output.items)
    report["scored"] = True
    report["metrics"] = scorer.summary(targets, scores)
    report["metrics"]["baseline"] = baseline
    report["identification"] = scorer.identification
    report["per_target"] = scorer.per_target(targets, scores)
    return report


def _inventory(items: list[Reconstruction]) -> dict:
    counts: dict[str, dict] = defaultdict(lambda: {"items": 0, "certified": 0})
    for item in items:
        entry = counts[f"{item.kind} @ {item.round} ({item.space})"]
        entry["items"] += 1
        entry["certified"] += int(item.certified)
    return dict(counts)


class _Scorer:
    def __init__(self, attack: Attack, view: ServerView, truth: GroundTruth):
        self.attack, self.view, self.truth = attack, view, truth
        self.owner = truth.client_of()
        self.spaces = Spaces(truth, view)
        self.cell_size = np.zeros((len(truth.client_indices), truth.num_classes), dtype=np.int64)
        np.add.at(self.cell_size, (self.owner, truth.labels), 1)
        self.identification: dict | None = None
        self.by_round: dict[str, dict] = defaultdict(lambda: {"matched": 0, "recovered": 0})

    def tally(self, score: Score) -> None:
        """Every matched reconstruction, per round (the headline keeps each target's best round)."""
        row = self.by_round[score.round]
        row["matched"] += 1
        row["recovered"] += int(self.recovered(score.score))

    def recovered(self, score: float) -> bool:
        if self.attack.metric == "relative_error":
            return score <= self.attack.threshold
        return score >= self.attack.threshold

    # -- targets ---------------------------------------------------------------------------
    def run(self, items: list[Reconstruction]):
        kind = self.attack.targets
        if kind in ("singletons", "samples"):
            return self._features(items, singletons_only=kind == "singletons")
        if kind == "cells":
            return self._cells(items)
        if kind == "clients":
            return self._clients(items)
        return self._victims(items)

    def _features(self, items, singletons_only: bool):
        samples = np.arange(len(self.truth.labels))
        if singletons_only:
            samples = samples[self.cell_size[self.owner, self.truth.labels] == 1]
        targets = [(int(self.owner[s]), int(s)) for s in samples]
        scores: dict[tuple, Score] = {}
        groups: dict[tuple, list[Reconstruction]] = defaultdict(list)
        for item in items:
            if item.kind == "feature":
                groups[(item.round, item.client, item.space)].append(item)
        spaces = set()
        for (round_name, client, space), group in groups.items():
            spaces.add(space)
            train = self.spaces.rows(space)[0]
            candidates = self.truth.client_indices[client]
            if singletons_only:
                candidates = candidates[self.cell_size[client, self.truth.labels[candidates]] == 1]
            if len(candidates) == 0:
                continue
            values = np.stack([item.value for item in group])
            similarity = _unit(values) @ _unit(train[candidates]).T
            if all(item.label is not None for item in group):  # a reconstruction of class c can only be a row of class c
                same = np.array([item.label for item in group])[:, None] == self.truth.labels[candidates][None, :]
                similarity = np.where(same, similarity, -2.0)
            rows, cols = linear_sum_assignment(-similarity)
            nearest = self.spaces.nearest(space, values[rows])
            for r, c, near in zip(rows, cols, nearest):
                if similarity[r, c] < -1.0:
                    continue
                key = (client, int(candidates[c]))
                score = Score(key, float(similarity[r, c]), bool(near == candidates[c]), round_name, int(near),
                              group[r].certified)
                self.tally(score)
                if key not in scores or score.score > scores[key].score:
                    scores[key] = score
        pool_space = "x" if "x" in spaces or not spaces else sorted(spaces)[0]
        self.identification = {"rule": IDENTIFICATION.format(pool=len(self.truth.labels)), "spaces": sorted(spaces)}
        return targets, scores, self._feature_baseline(targets, pool_space)

    def _feature_baseline(self, targets, space: str) -> dict:
        if not targets:
            return _baseline("the mean feature of the target's class over public images (the test split)",
                             [], [])
        means = self.spaces.public_class_means(space)
        samples = np.array([s for _, s in targets])
        guesses = means[self.truth.labels[samples]]
        train = self.spaces.rows(space)[0]
        cosine = np.einsum("ij,ij->i", _unit(guesses), _unit(train[samples]))
        nearest = self.spaces.nearest(space, guesses)
        return _baseline("the mean feature of the target's class over public images (the test split), "
                         "given the true label", [self.recovered(c) for c in cosine], list(nearest == samples))

    def _cells(self, items):
        targets = [(int(k), int(c)) for k, c in zip(*np.nonzero(self.cell_size))]
        scores: dict[tuple, Score] = {}
        spaces = set()
        for item in items:
            if item.kind != "class-mean" or (item.client, item.label) not in set(targets):
                continue
            spaces.add(item.space)
            train = self.spaces.rows(item.space)[0]
            members = self.truth.client_indices[item.client]
            members = members[self.truth.labels[members] == item.label]
            cosine = _cosine(item.value, train[members].mean(axis=0))
            near = int(self.spaces.nearest(item.space, item.value[None])[0])
            score = Score((item.client, item.label), cosine, bool(near in set(members)), item.round, near, item.certified)
            self.tally(score)
            if score.target not in scores or score.score > scores[score.target].score:
                scores[score.target] = score
        space = sorted(spaces)[0] if spaces else "x"
        self.identification = {"rule": "the reconstruction's nearest training row (cosine) belongs to the cell",
                               "spaces": sorted(spaces)}
        means = self.spaces.public_class_means(space)
        train = self.spaces.rows(space)[0]
        guessed, hits = [], []
        for client, label in targets:
            members = self.truth.client_indices[client]
            members = members[self.truth.labels[members] == label]
            guessed.append(self.recovered(_cosine(means[label], train[members].mean(axis=0))))
            hits.append(int(self.spaces.nearest(space, means[label][None])[0]) in set(members))
        return targets, scores, _baseline("the mean feature of the class over public images (the test "
                                          "split), given the true label", guessed, hits)

    def _clients(self, items):
        targets = [(k,) for k in range(len(self.truth.client_indices))]
        scores: dict[tuple, Score] = {}
        cells_exact = []
        for item in items:
            if item.kind != "counts":
                continue
            exact = np.array_equal(item.value, self.cell_size[item.client])
            cells_exact.append(float(np.mean(item.value == self.cell_size[item.client])))
            score = Score((item.client,), float(exact), None, item.round, None, item.certified)
            self.tally(score)
            scores.setdefault((item.client,), score)
        even = np.full(self.truth.num_classes, round(len(self.truth.labels) / len(targets) / self.truth.num_classes))
        guessed = [bool(np.array_equal(even, self.cell_size[k])) for (k,) in targets]
        self.identification = None
        baseline = _baseline("every client holds an even share of every class (N / K / C samples)",
                             guessed, None)
        baseline["cell_exact_fraction"] = float(np.mean(self.cell_size == even))
        self.cells_exact = float(np.mean(cells_exact)) if cells_exact else 0.0
        return targets, scores, baseline

    def _victims(self, items):
        victims: dict[tuple, tuple] = {}
        for entries in same_statistic(self.view):
            for entry in entries:
                for other in entries:
                    for client in set(other.included) - set(entry.included):
                        victims.setdefault((client,), (entry, other))
        targets = sorted(victims)
        scores: dict[tuple, Score] = {}
        guessed = []
        for (client,), (_, with_client) in victims.items():
            truth = self.truth.contribution(with_client.name, client, with_client.spec.get("layout", {}))
            if truth is None:
                continue
            scale = max(float(np.max(np.abs(truth))), 1e-300)
            guess = with_client.total / len(with_client.included)
            guessed.append(self.recovered(float(np.max(np.abs(guess - truth)) / scale)))
            for item in items:
                if item.kind == "contribution" and item.client == client:
                    error = float(np.max(np.abs(item.value - truth)) / scale)
                    self.tally(Score((client,), error, None, item.round))
                    if (client,) not in scores or error < scores[(client,)].score:
                        scores[(client,)] = Score((client,), error, None, item.round, None, item.certified)
        self.identification = None
        return targets, scores, _baseline("the aggregate divided by the number of clients in it (what "
                                          "secure aggregation intends the server to learn)", guessed, None)

    # -- summaries -------------------------------------------------------------------------
    def summary(self, targets: list[tuple], scores: dict[tuple, Score]) -> dict:
        recovered = [t for t in targets if t in scores and self.recovered(scores[t].score)]
        identified = [t for t in targets if t in scores and scores[t].identified]
        certified = [s for s in scores.values() if s.certified]
        metrics = {
            "targets": len(targets),
            "recovered_fraction": len(recovered) / len(targets) if targets else 0.0,
            "identified_fraction": (len(identified) / len(targets) if targets else 0.0)
            if self.identification is not None else None,
            "matched": len(scores),
            "certified": len(certified),
            "certified_correct": sum(self.recovered(s.score) for s in certified),
            "by_round": dict(self.by_round),
        }
        if self.attack.targets == "clients":
            metrics["cell_exact_fraction"] = self.cells_exact
        if self.attack.targets in ("samples", "singletons"):
            metrics["by_class_size"] = self._by_size(targets, scores, lambda t: self.cell_size[t[0], self.truth.labels[t[1]]])
            metrics["by_client_size"] = self._by_size(targets, scores, lambda t: len(self.truth.client_indices[t[0]]))
        return metrics

    def _by_size(self, targets, scores, size_of) -> dict:
        table: dict[str, dict] = {}
        for target in targets:
            row = table.setdefault(_bucket(int(size_of(target))), {"targets": 0, "recovered": 0, "identified": 0})
            row["targets"] += 1
            score = scores.get(target)
            row["recovered"] += int(score is not None and self.recovered(score.score))
            row["identified"] += int(score is not None and bool(score.identified))
        order = [_bucket(low) for low, _ in SIZE_BUCKETS]
        return {bucket: table[bucket] for bucket in order if bucket in table}

    def per_target(self, targets: list[tuple], scores: dict[tuple, Score]) -> list[dict]:
        rows = []
        for target in targets:
            score = scores.get(target)
            row = {"client": target[0]}
            if self.attack.targets in ("samples", "singletons"):
                row.update(sample=target[1], label=int(self.truth.labels[target[1]]),
                           cell_size=int(self.cell_size[target[0], self.truth.labels[target[1]]]))
            elif self.attack.targets == "cells":
                row.update(label=target[1], cell_size=int(self.cell_size[target]))
            row.update(score=None if score is None else score.score,
                       recovered=score is not None and self.recovered(score.score),
                       identified=None if score is None else score.identified,
                       nearest=None if score is None else score.nearest,
                       certified=score is not None and score.certified,
                       round=None if score is None else score.round)
            rows.append(row)
        return rows


def _baseline(description: str, recovered: list[bool], identified: list[bool] | None) -> dict:
    count = len(recovered)
    return {
        "description": description,
        "recovered_fraction": float(np.mean(recovered)) if count else 0.0,
        "identified_fraction": None if identified is None else (float(np.mean(identified)) if count else 0.0),
    }
