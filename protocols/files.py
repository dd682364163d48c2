"""Checks and modes every writer of results, reports and transcripts shares.

Outputs are checked before a run starts, so a long run cannot end in a refusal and lose its results.
Permission bits do not tell whether a directory accepts files (root ignores them; /proc and read-only
mounts refuse anyway), so the check creates and removes a temporary file where the output will go.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

import numpy as np


def default_mode(base: int) -> int:
    """``base`` under the process umask: what ``open`` would give; ``mkstemp``/``mkdtemp`` give 0600/0700."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def unwritable_reason(path: str | Path) -> str | None:
    """Why ``path`` cannot be created (its parent, or the nearest ancestor that exists when the parent
    does not yet, refuses a new file), or None when it can."""
    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{str(existing or parent)!r} is not a directory"
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".secure-afl-probe-")
    except OSError as exc:
        return f"{str(existing)!r} is not writable ({exc.strerror or exc})"
    os.close(handle)
    os.unlink(probe)
    return None


def write_atomically(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Create ``path`` by ``write(file)`` on a temporary file beside it, renamed into place once complete:
    an interrupted or failed write leaves the path as it was and no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w") as out:
            write(out)
        os.chmod(tmp, default_mode(0o666))  # mkstemp makes it private to the user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def entry_checksum(key: str, *arrays: np.ndarray) -> str:
    """SHA-256 binding a cache entry's arrays (dtype, shape, bytes) to its key, so a damaged file fails it and so
    does a file under another key's name."""
    digest = hashlib.sha256(key.encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.data)
    return digest.hexdigest()
