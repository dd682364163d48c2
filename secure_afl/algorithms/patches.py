"""The layer algebra of a layer-wise analytic CNN (algorithms/fedacnnl.py): convolutions as linear maps on patches.

A 3×3 convolution with padding 1 is a matrix product: ``unfold`` turns an image's maps (c × s × s) into one
row per output position holding the 9c values under the kernel, a bias column of ones is appended, and the
layer's pre-activations are those rows times a (9c + 1) × c_out weight matrix. That makes every layer's
training a least-squares problem on patch rows, whose Gram and cross term are sums over clients.

FedACnnL runs everything here in float64 and treats each image on its own, so what a client computes for a batch
of images does not depend on the batch it was computed in (only the order of the float64 sums does). The same
functions, in float32 and with weights that are torch parameters, are the forward of the network FedAvg trains end
to end (``fedacnnl.ACnnNetwork``): one definition of the architecture for both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from secure_afl.algorithms.convnet import CHANNELS, IMAGE_SIZE

KERNEL = 3


def patch_dim(channels: int) -> int:
    """Width of a patch row of maps with ``channels`` channels: 9c values and the bias column."""
    return KERNEL * KERNEL * channels + 1


def images(rows: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Flat pixel rows (N, 3·32·32) as ``dtype`` maps (N, 3, 32, 32)."""
    return torch.as_tensor(rows).to(dtype).reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)


def windows(maps: torch.Tensor) -> torch.Tensor:
    """(N, c, s, s) maps → (N, s·s, 9c): the 3×3 window (zero padding) under every output position. A patch row
    is a window and the bias column's 1; the 1 is never stored (``RowSums`` adds its terms in closed form)."""
    return F.unfold(maps, KERNEL, padding=KERNEL // 2).transpose(1, 2)


def patch_rows(maps: torch.Tensor) -> torch.Tensor:
    """(N, c, s, s) maps → (N, s·s, 9c + 1) patch rows: the windows, then a column of ones."""
    rows = windows(maps)
    return torch.cat([rows, torch.ones(*rows.shape[:2], 1, dtype=rows.dtype)], dim=2)


def affine(rows: torch.Tensor, weights: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows without their bias column times W (the last row of W is the bias), in the rows' dtype (a torch
    parameter of that dtype stays differentiable)."""
    w = torch.as_tensor(weights, dtype=rows.dtype)
    return rows @ w[:-1] + w[-1]


def leaky_relu(z: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.where(z >= 0, z, slope * z)


def leaky_relu_inverse(a: np.ndarray, slope: float) -> np.ndarray:
    """f⁻¹ of the leaky ReLU (invertible for slope > 0): the target pre-activation of an activation."""
    return np.where(a >= 0, a, a / slope)


def conv_layer(maps: torch.Tensor, weights: np.ndarray | torch.Tensor, slope: float) -> torch.Tensor:
    """One layer: 3×3 convolution (the patch rows times W), leaky ReLU, 2×2 mean pooling."""
    n, _, size, _ = maps.shape
    z = affine(windows(maps), weights)
    activated = leaky_relu(z, slope).transpose(1, 2).reshape(n, weights.shape[1], size, size)
    return F.avg_pool2d(activated, 2)


def forward(rows: torch.Tensor | np.ndarray, layers: list, slope: float, dtype: torch.dtype = torch.float64
            ) -> torch.Tensor:
    """The maps after ``layers`` (each a (9c + 1) × c_out matrix, numpy or torch) applied to pixel rows."""
    maps = images(rows, dtype)
    for weights in layers:
        maps = conv_layer(maps, weights, slope)
    return maps


def head_rows(maps: torch.Tensor) -> torch.Tensor:
    """The head's input rows without their bias column: the last maps flattened (one row per image)."""
    return maps.flatten(1)


def scores(rows: torch.Tensor | np.ndarray, layers: list, head, slope: float, dtype: torch.dtype = torch.float64
           ) -> torch.Tensor:
    """The network's class scores of pixel rows: the convolutions, then the linear head on the flattened maps."""
    return affine(head_rows(forward(rows, layers, slope, dtype)), head)


class RowSums:
    """G = AᵀA and H° = AᵀY of rows A = [X 1] (X's rows grouped by image, one label per image), accumulated in
    float64 batch after batch, with the bias column's terms added in closed form (Σx, the row count)."""

    def __init__(self, width: int, num_classes: int):
        self.gram = np.zeros((width + 1, width + 1))
        self.cross = np.zeros((width + 1, num_classes))
        self.class_counts = np.zeros(num_classes, dtype=np.int64)
        self.count = 0

    def add(self, rows: torch.Tensor, labels: np.ndarray) -> None:
        """``rows``: (images, positions, width) float64, every position of an image sharing its label."""
        images, positions, width = rows.shape
        flat = rows.reshape(-1, width)
        per_image = rows.sum(dim=1).numpy()  # Σ over positions: each image's contribution to H° and to G's bias column
        onehot = np.eye(self.cross.shape[1])[labels]
        self.gram[:width, :width] += (flat.T @ flat).numpy()
        self.gram[:width, width] += per_image.sum(axis=0)
        self.gram[width, :width] = self.gram[:width, width]
        self.gram[width, width] += images * positions
        self.cross[:width] += per_image.T @ onehot
        counts = positions * np.bincount(labels, minlength=self.cross.shape[1])
        self.cross[width] += counts
        self.class_counts += counts
        self.count += images * positions


def output_bound(weights: np.ndarray, entry_bound: float) -> float:
    """A public bound on every entry of the maps after a layer whose inputs are bounded by ``entry_bound``:
    |z_j| ≤ Σ_i |W_ij| · max(entry_bound, 1) (the bias column is 1); a leaky ReLU of slope ≤ 1 and mean pooling
    never increase a magnitude."""
    return float(np.abs(weights).sum(axis=0).max()) * max(entry_bound, 1.0)
