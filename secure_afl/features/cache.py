"""On-disk cache of extracted features, so a second run with the same inputs skips the backbone.

The key is a SHA-256 over everything that determines the features: the dataset and pool, the
fingerprint of the pixels, the backbone, the weights file's hash, the resolution and the
preprocessing. Files are plain ``.npz`` arrays loaded with ``allow_pickle=False`` and written
atomically (temporary file, then rename), so an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("SECURE_AFL_CACHE", Path.home() / ".cache" / "secure_afl")) / "features"


def cache_key(parts: dict) -> str:
    payload = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class FeatureCache:
    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def load(self, key: str, expected_labels: np.ndarray) -> np.ndarray | None:
        """The cached features, or None when absent or not matching the labels they were made for."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                features, labels = stored["features"], stored["labels"]
        except (OSError, ValueError, KeyError):
            return None
        if features.shape[0] != len(expected_labels) or not np.array_equal(labels, expected_labels):
            return None
        return features

    def store(self, key: str, features: np.ndarray, labels: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, features=features, labels=labels)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
