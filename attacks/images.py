"""How close a reconstructed image is to the private one: the metrics every inversion attack reports.

Feature inversion (a recovered backbone feature back to pixels) and gradient inversion (a client's
update back to its batch) are scored the same way, so their figures sit side by side:

- **PSNR** and **SSIM** on [0, 1] images (torchmetrics' Gaussian-window SSIM, not breaching's
  complex-wavelet SSIM; the window shrinks for images smaller than 11 pixels);
- **identifiability** (breaching's IIP): a reconstruction identifies its target when the target is
  its nearest neighbour among a pool of candidate images (every training image), in pixel space or
  in any feature space the caller supplies. Pixel PSNR understates what pooled features reveal;
  identifiability says whether the attacker could point at the right person's image;
- **matching**: a batch reconstruction is unordered, so it is re-ordered to the truth by the
  Hungarian assignment on pixel MSE before any metric (breaching's convention).

Images are (N, C, H, W) arrays or tensors, uint8 in [0, 255] or float in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

SSIM_WINDOW = 11


def as_unit(images) -> torch.Tensor:
    """float32 (N, C, H, W) in [0, 1]: uint8 is divided by 255, floats are clamped (a reconstruction may
    overshoot the box)."""
    tensor = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if tensor.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.detach().float().clamp(0.0, 1.0)


def _pair(reconstructions, originals) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_unit(reconstructions), as_unit(originals)
    if x.shape != y.shape:
        raise ValueError(f"reconstructions {tuple(x.shape)} and originals {tuple(y.shape)} differ in shape")
    return x, y


def psnr(reconstructions, originals) -> np.ndarray:
    """Per-image PSNR in dB (data range 1). Identical images give +inf."""
    x, y = _pair(reconstructions, originals)
    return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)).double().numpy()


def ssim(reconstructions, originals) -> np.ndarray:
    """Per-image SSIM (Gaussian window of SSIM_WINDOW pixels, or the largest odd size that fits)."""
    x, y = _pair(reconstructions, originals)
    window = min(SSIM_WINDOW, min(x.shape[-2:]) - (1 - min(x.shape[-2:]) % 2))
    values = structural_similarity_index_measure(x, y, data_range=1.0, kernel_size=window, reduction="none")
    return values.double().reshape(-1).numpy()


def match(reconstructions, originals) -> np.ndarray:
    """The order of ``reconstructions`` that best matches ``originals`` (Hungarian assignment on pixel MSE):
    ``reconstructions[order[i]]`` is compared with ``originals[i]``."""
    x, y = _pair(reconstructions, originals)
    cost = torch.cdist(y.flatten(1).double(), x.flatten(1).double()).pow(2).numpy()
    rows, columns = linear_sum_assignment(cost)
    return columns[np.argsort(rows)]


@dataclass(frozen=True)
class Identification:
    """Where each target ranks among the candidates when they are sorted by distance to its reconstruction
    (rank 0: the target is the nearest neighbour, i.e. identified)."""

    ranks: np.ndarray
    nearest: np.ndarray  # index into the candidates of each reconstruction's nearest neighbour

    @property
    def identified(self) -> np.ndarray:
        return self.ranks == 0

    def top(self, k: int) -> np.ndarray:
        return self.ranks < k


def identify(reconstructions: np.ndarray, candidates: np.ndarray, truth: np.ndarray) -> Identification:
    """Nearest-neighbour identification of each reconstruction among ``candidates`` (rows are flattened
    images or feature vectors; Euclidean distance). ``truth[i]`` is the index of reconstruction i's
    target among the candidates."""
    queries = torch.as_tensor(np.asarray(reconstructions, dtype=np.float64).reshape(len(truth), -1))
    pool = torch.as_tensor(np.asarray(candidates, dtype=np.float64).reshape(len(candidates), -1))
    if queries.shape[1] != pool.shape[1]:
        raise ValueError(f"reconstructions have {queries.shape[1]} values each, candidates {pool.shape[1]}")
    distances = torch.cdist(queries, pool)
    truth = np.asarray(truth, dtype=np.int64)
    own = distances[torch.arange(len(truth)), torch.as_tensor(truth)]
    ranks = (distances < own[:, None]).sum(dim=1).numpy()
    return Identification(ranks=ranks, nearest=distances.argmin(dim=1).numpy())


def pixels(images) -> np.ndarray:
    """Flattened [0, 1] float64 rows, for ``identify`` in pixel space."""
    return as_unit(images).double().flatten(1).numpy()
