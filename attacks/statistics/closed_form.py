"""Exact attacks on one client's statistics: class counts, class means and singleton features.

With one-hot labels, column c of H_k = X_kᵀY_k is the sum of client k's rows of class c, so
H_k[:, c] / n_kc is the class mean and, when a class has exactly one sample on the client, that
sample's feature vector itself — exactly, whatever the protocol's precision (plaintext messages
are float64). The counts are sent in the clear beside them; a layout that withheld them would not
help: when the client's rows are linearly independent (n_k ≤ d), W = G⁺H is the minimum-norm
least-squares map and WᵀH = YᵀX(XᵀX)⁺XᵀY = YᵀY = diag(counts), exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attacks.base import ATTACKED, Attack, Reconstruction, ServerView, register
from attacks.statistics.rounds import Unreadable, client_statistics, round_key, statistics_rounds
from secure_afl.statistics import Statistics

HONEST_BUT_CURIOUS = ("honest-but-curious server: follows the protocol and reads every message it receives in one "
                      "normal run; knows the job's public configuration (feature norm bound, γ, buffer seeds, "
                      "backbone); no colluding client")


def counts_from_statistics(stats: Statistics, sent: bool) -> tuple[np.ndarray, bool]:
    """(class counts, exact?): read off the vector when sent, else diag(HᵀG⁺H), exact when rank G = n."""
    if sent:
        return stats.class_counts.astype(np.int64), True
    values, vectors = range_basis(stats.gram)
    projected = vectors.T @ stats.cross / np.sqrt(values)[:, None]
    diagonal = np.einsum("rc,rc->c", projected, projected)
    counts = np.rint(diagonal).astype(np.int64)
    exact = len(values) == int(counts.sum()) and bool(np.all(np.abs(diagonal - counts) < 1e-6))
    return counts, exact


def range_basis(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G's eigenvalues above float64's rank tolerance and their eigenvectors: an orthonormal basis of G's
    range, whose size is G's numerical rank (the number of linearly independent rows behind it)."""
    values, vectors = np.linalg.eigh(gram)
    keep = values > values.max() * gram.shape[0] * np.finfo(np.float64).eps if values.size else values > 0
    return values[keep], vectors[:, keep]


def readable_clients(view: ServerView, rounds: dict[str, str]):
    """(round, client, statistics, counts, counts exact) for every readable client of every labelled
    statistics round; unreadable rounds are noted with the reason."""
    for item in statistics_rounds(view, rounds):
        try:
            per_client = client_statistics(item)
        except Unreadable as exc:
            rounds[round_key(item.entry)] = str(exc)
            continue
        rounds[round_key(item.entry)] = ATTACKED
        for client, stats in sorted(per_client.items()):
            counts, exact = counts_from_statistics(stats, bool(item.layout.get("counts")))
            yield item, client, stats, counts, exact


@register
class CountsAttack(Attack):
    name = "counts"
    threat_model = HONEST_BUT_CURIOUS
    metric = "exact"
    threshold = 1.0
    targets = "clients"

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        for item, client, _, counts, exact in readable_clients(view, rounds):
            yield Reconstruction("counts", item.entry.name, client, "counts", counts, certified=exact)


@register
class ClassMeansAttack(Attack):
    name = "class-means"
    threat_model = HONEST_BUT_CURIOUS
    metric = "cosine"
    threshold = 0.9999
    targets = "cells"

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        for item, client, stats, counts, exact in readable_clients(view, rounds):
            for label in np.flatnonzero(counts):
                mean = stats.cross[:, label] / counts[label]
                yield Reconstruction("class-mean", item.entry.name, client, item.space, mean, int(label), exact)


@register
class SingletonAttack(Attack):
    name = "singleton"
    threat_model = HONEST_BUT_CURIOUS
    metric = "cosine"
    threshold = 0.9999
    targets = "singletons"

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        yield from singletons(view, rounds)


def singletons(view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
    """Every (client, class) cell with exactly one sample: H's column is that sample's row."""
    for item, client, stats, counts, exact in readable_clients(view, rounds):
        for label in np.flatnonzero(counts == 1):
            yield Reconstruction("feature", item.entry.name, client, item.space, stats.cross[:, label].copy(),
                                 int(label), exact)
