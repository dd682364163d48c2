"""On-disk cache of extracted features, so a second run with the same inputs skips the backbone.

The key is a SHA-256 over everything that determines the features: the dataset and pool, the
fingerprint of the pixels, the backbone, the weights file's hash, the resolution and the
preprocessing. Files are plain ``.npz`` arrays loaded with ``allow_pickle=False`` and written
atomically (temporary file, then rename), so an interrupted run never leaves a half-written entry.

An entry is never trusted: it carries a SHA-256 over its key and arrays, so a damaged file (a disk
that filled up, a copy cut short) or a foreign one (another key's file, or one written by something
else) is reported in one warning and recomputed, never used and never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from protocols.files import entry_checksum, write_atomically

CACHE_FORMAT = 1
log = logging.getLogger(__name__)


class CacheWarning(UserWarning):
    """A cache entry could not be used and is being recomputed."""


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
        """The cached features, or None (with a warning unless simply absent) when the entry is unreadable,
        fails its checksum or was not made for these labels."""
        path = self.path(key)
        if not path.is_file():
            log.info("feature cache: no entry %s", path)
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                features, labels, checksum = stored["features"], stored["labels"], stored.get("checksum")
        except Exception as exc:  # whatever a damaged file raises (BadZipFile, EOFError, ...): recompute
            return _unusable(path, f"is unreadable ({type(exc).__name__}: {exc})")
        if checksum is None:
            return _unusable(path, "has no checksum (written by an older secure-afl, or by something else)")
        if str(checksum) != entry_checksum(key, features, labels):
            return _unusable(path, "fails its checksum (damaged, or another entry's file)")
        if features.shape[0] != len(expected_labels) or not np.array_equal(labels, expected_labels):
            return _unusable(path, "was made for other labels")
        log.info("feature cache: hit %s", path)
        return features

    def store(self, key: str, features: np.ndarray, labels: np.ndarray) -> None:
        checksum = np.array(entry_checksum(key, features, labels))
        write_atomically(self.path(key), lambda out: np.savez(out, features=features, labels=labels, checksum=checksum),
                         binary=True)
        log.info("feature cache: stored %s", self.path(key))


def _unusable(path: Path, reason: str) -> None:
    warnings.warn(f"feature cache entry {path} {reason}; recomputing it", CacheWarning, stacklevel=3)
    return None
