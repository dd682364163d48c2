"""Where images come from: in-memory arrays or image files, read in batches as uint8 RGB.

A source only reads pixels; resizing to the backbone's resolution happens in the extractor
(on the GPU when there is one). Files of differing sizes are resized while reading, because
they cannot be stacked otherwise. Each source has a fingerprint so cached features are tied to
the exact pixels (arrays) or files (path, size, modification time) they came from.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from secure_afl.errors import DataError


class ImageSource(ABC):
    """A fixed, ordered collection of labelled images."""

    labels: np.ndarray  # int64, one per image

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abstractmethod
    def read(self, indices: Sequence[int] | np.ndarray, size: int) -> torch.Tensor:
        """uint8 tensor (B, 3, H, W); H = W = size unless the source's own images share one size."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the pixels this source yields, for the feature cache key."""


class ArraySource(ImageSource):
    """Images held in memory as uint8 arrays, (N, H, W) grayscale or (N, H, W, 3) RGB."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise DataError(f"images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)

    def read(self, indices, size):
        batch = torch.from_numpy(self.images[np.asarray(indices)])
        if batch.ndim == 3:
            return batch.unsqueeze(1).expand(-1, 3, -1, -1)
        return batch.permute(0, 3, 1, 2)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(str(self.images.shape).encode())
        digest.update(self.images.tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()


class FileSource(ImageSource):
    """Image files decoded with Pillow, converted to RGB and resized (bicubic) while reading."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray):
        if len(paths) != len(labels):
            raise DataError(f"{len(paths)} image files but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)

    def read(self, indices, size):
        from PIL import Image

        arrays = []
        for index in np.asarray(indices):
            path = self.paths[int(index)]
            try:
                with Image.open(path) as image:
                    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            except OSError as exc:
                raise DataError(f"cannot read image {str(path)!r}: {exc}") from exc
            arrays.append(np.asarray(resized, dtype=np.uint8))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels):
            stat = path.stat()
            digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
        return digest.hexdigest()
