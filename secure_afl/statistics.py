"""Sufficient statistics (spec §1): the only thing a client ever contributes, and its flat packing.

G = XᵀX, H = XᵀY, n and the class counts are accumulated in float64 on the features' device,
in row batches, whatever precision the features were computed in. For the protocols a client's
statistics become one flat float64 vector: the upper triangle of G (row-major), then H, then n,
then the counts. Sums and differences of statistics are sums and differences of those vectors.
The upper triangle is the statistic; the lower one is always its mirror, so a client's local G is
exactly what the server rebuilds from the packed vector.

Every client of every round packs a d × d matrix, which makes this module the simulation's hot
path: packing copies row slices and mirroring works tile by tile, because whole-matrix fancy
indexing and transposes of a 13 MB Gram cost several times more (TLB misses) than the Gram's matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secure_afl.errors import EmptyClientError, FeatureError


@dataclass(frozen=True)
class Statistics:
    gram: np.ndarray  # (d, d) float64, symmetric
    cross: np.ndarray  # (d, C) float64
    count: int
    class_counts: np.ndarray  # (C,) int64

    def __add__(self, other: Statistics) -> Statistics:
        _check_compatible(self, other)
        return Statistics(
            self.gram + other.gram, self.cross + other.cross, self.count + other.count, self.class_counts + other.class_counts
        )

    def __sub__(self, other: Statistics) -> Statistics:
        _check_compatible(self, other)
        return Statistics(
            self.gram - other.gram, self.cross - other.cross, self.count - other.count, self.class_counts - other.class_counts
        )

    @property
    def dim(self) -> int:
        return self.gram.shape[0]

    @property
    def num_classes(self) -> int:
        return self.cross.shape[1]


def _check_compatible(a: Statistics, b: Statistics) -> None:
    if a.gram.shape != b.gram.shape or a.cross.shape != b.cross.shape:
        raise FeatureError(f"cannot combine statistics of shapes {a.cross.shape} and {b.cross.shape}")


def validate_features(features: torch.Tensor | np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Refuse inputs that would silently poison a sum: wrong shapes, NaN/Inf, labels out of range, no rows."""
    if features.ndim != 2:
        raise FeatureError(f"features must be a 2-D (samples × dims) array, got shape {tuple(features.shape)}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise FeatureError(f"{features.shape[0]} feature rows but labels of shape {labels.shape}")
    if features.shape[0] == 0:
        raise EmptyClientError("a client holds zero samples and has no statistics to send; repartition the data")
    finite = torch.isfinite(features).all() if isinstance(features, torch.Tensor) else np.isfinite(features).all()
    if not bool(finite):
        raise FeatureError("features contain NaN or Inf; fix the inputs or the backbone before aggregating")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FeatureError(f"labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")


def compute_statistics(
    features: torch.Tensor | np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int = 8192
) -> Statistics:
    """(G, H, n, counts) of one client's feature rows, accumulated in float64."""
    stats = _accumulate(features, labels, num_classes, batch_size)
    mirror_upper(stats.gram)
    return stats


def packed_statistics(
    features: torch.Tensor | np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int = 8192
) -> np.ndarray:
    """``compute_statistics`` packed for a protocol, without mirroring the triangle packing skips."""
    stats = _accumulate(features, labels, num_classes, batch_size)
    return StatisticsLayout(stats.dim, num_classes).pack(stats)


def _accumulate(features, labels, num_classes: int, batch_size: int) -> Statistics:
    """The statistics with only G's upper triangle meaningful (the matmul fills the lower one too,
    but nothing here promises it equals the upper one bit for bit)."""
    validate_features(features, labels, num_classes)
    x_all = torch.as_tensor(features)
    device = x_all.device
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    dim = x_all.shape[1]
    gram = None  # the first batch's product is the accumulator: zeroing and adding 13 MB costs half a matmul
    cross = torch.zeros((dim, num_classes), dtype=torch.float64, device=device)
    for start in range(0, x_all.shape[0], batch_size):
        x = x_all[start : start + batch_size].to(torch.float64)
        gram = x.T @ x if gram is None else gram.addmm_(x.T, x)
        cross.index_add_(1, y_all[start : start + batch_size], x.T)
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.int64)
    return Statistics(gram.cpu().numpy(), cross.cpu().numpy(), int(x_all.shape[0]), counts)


_TILE = 128  # two 128 × 128 float64 tiles fit in L2, so their transposed copy stays cheap


def mirror_upper(matrix: np.ndarray) -> np.ndarray:
    """In place: the lower triangle becomes the transpose of the upper one; returns ``matrix``."""
    n = matrix.shape[0]
    for i in range(0, n, _TILE):
        rows = slice(i, i + _TILE)
        diagonal = matrix[rows, rows]
        diagonal[...] = np.triu(diagonal) + np.triu(diagonal, 1).T
        for j in range(i + _TILE, n, _TILE):
            cols = slice(j, j + _TILE)
            matrix[cols, rows] = matrix[rows, cols].T
    return matrix


@dataclass(frozen=True)
class StatisticsLayout:
    """Where each statistic sits in the flat vector of a (dim, num_classes) problem."""

    dim: int
    num_classes: int

    @property
    def triangle(self) -> int:
        return self.dim * (self.dim + 1) // 2

    @property
    def length(self) -> int:
        return self.triangle + self.dim * self.num_classes + 1 + self.num_classes

    def describe(self, rows: str, targets: str = "labels", counts: bool = True, **extra) -> dict:
        """The public layout of a packed vector: slices [start, stop) of the upper triangle of G (row-major),
        of H (row-major d × C), the index of n and the slice of the class counts. ``rows`` names what G's
        rows are (``x``: the mapped features), ``targets`` what H's columns are (``labels``: one-hot), and
        ``counts`` whether n and the counts are sent (False: those entries are zero)."""
        offset = self.triangle + self.dim * self.num_classes
        return {"kind": "statistics", "dim": self.dim, "classes": self.num_classes, "rows": rows, "targets": targets,
                "counts": counts, "gram_upper": [0, self.triangle], "cross": [self.triangle, offset],
                "count": offset, "class_counts": [offset + 1, self.length], **extra}

    def pack(self, stats: Statistics) -> np.ndarray:
        """The flat vector; reads only the upper triangle of G."""
        if stats.gram.shape != (self.dim, self.dim) or stats.cross.shape != (self.dim, self.num_classes):
            raise FeatureError(
                f"statistics of dim {stats.dim} and {stats.num_classes} classes do not fit the layout "
                f"({self.dim}, {self.num_classes})"
            )
        vector = np.empty(self.length)
        start = 0
        for i, row in enumerate(stats.gram):
            vector[start : start + self.dim - i] = row[i:]
            start += self.dim - i
        offset = self.triangle + self.dim * self.num_classes
        vector[self.triangle : offset] = stats.cross.ravel()
        vector[offset] = stats.count
        vector[offset + 1 :] = stats.class_counts
        return vector

    def unpack(self, vector: np.ndarray) -> Statistics:
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (self.length,):
            raise FeatureError(f"a packed vector of this layout has {self.length} entries, got shape {vector.shape}")
        gram = np.empty((self.dim, self.dim))
        start = 0
        for i in range(self.dim):
            gram[i, i:] = vector[start : start + self.dim - i]
            start += self.dim - i
        mirror_upper(gram)
        offset = self.triangle + self.dim * self.num_classes
        cross = vector[self.triangle : offset].reshape(self.dim, self.num_classes).copy()
        count = int(round(vector[offset]))
        class_counts = np.round(vector[offset + 1 :]).astype(np.int64)
        return Statistics(gram, cross, count, class_counts)
