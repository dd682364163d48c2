"""On-disk cache of trained decoders, kept like the feature cache: keyed, checksummed, pickle-free, atomic.

The key is a SHA-256 over what determines the decoder (the backbone's identity, the public pool's
fingerprint, the decoder's settings and architecture). An entry is a plain ``.npz`` of the weights
(loaded with ``allow_pickle=False``), a JSON metadata string and a SHA-256 over key, metadata and
every array, written to a temporary file and renamed into place. An entry that is unreadable, fails
its checksum or belongs to another key is reported in one warning and retrained, never used.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from protocols.files import entry_checksum, write_atomically

CACHE_FORMAT = 1
META = "__meta__"
CHECKSUM = "__checksum__"


class DecoderCacheWarning(UserWarning):
    """A cached decoder could not be used and is being retrained."""


class DecoderCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def key(parts: dict) -> str:
        payload = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"decoder-{key}.npz"

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(state dict, metadata), or None (with a warning unless simply absent)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            meta, checksum = str(arrays.pop(META)), str(arrays.pop(CHECKSUM))
        except Exception as exc:  # whatever a damaged file raises (BadZipFile, KeyError, ...): retrain
            return _unusable(path, f"is unreadable ({type(exc).__name__}: {exc})")
        if checksum != checksum_of(key, meta, arrays):
            return _unusable(path, "fails its checksum (damaged, or another entry's file)")
        return {name: torch.from_numpy(array) for name, array in arrays.items()}, json.loads(meta)

    def store(self, key: str, state: dict[str, torch.Tensor], meta: dict) -> Path:
        arrays = {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}
        text = json.dumps(meta, sort_keys=True)
        checksum = checksum_of(key, text, arrays)
        return write_atomically(self.path(key), lambda out: np.savez(out, **arrays, **{META: np.array(text),
                                                                                        CHECKSUM: np.array(checksum)}),
                                binary=True)


def checksum_of(key: str, meta: str, arrays: dict[str, np.ndarray]) -> str:
    """The entry's checksum over its key, metadata and arrays (in name order: the names are the architecture's)."""
    return entry_checksum(f"{key}|{meta}", *(arrays[name] for name in sorted(arrays)))


def _unusable(path: Path, reason: str) -> None:
    warnings.warn(f"decoder cache entry {path} {reason}; training the decoder again", DecoderCacheWarning, stacklevel=3)
    return None
