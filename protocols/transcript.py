"""What the server saw: one view per aggregation round, and the on-disk transcript of a whole run.

A protocol run with ``record=True`` returns, with each round's sum, a ``RoundView``: every message
the server received from each client exactly as it received it (raw wire bytes, by stage, the
unmasking material included), who was asked, included and dropped where, the public parameters
the protocol reported, and the sum it computed. Under plaintext aggregation the input messages
carry each client's vector; under masking they carry uniformly random words; under HE,
ciphertexts.

The transcript is the contract between a run and the attacks, so it lives on disk in an explicit,
versioned format (never pickle):

    PATH/manifest.json                       format, version, public knowledge, one entry per round
    PATH/rounds/NNNN/total.npy               the sum the server computed (float64)
    PATH/rounds/NNNN/broadcast.npz           public state the server broadcast with the round (if any)
    PATH/rounds/NNNN/messages/STAGE/ID.bin   the raw message client ID sent at STAGE
    PATH/disclosures/NAME/ID.bin             a message client ID sent outside any aggregation round

A disclosure is what the server received beside the rounds, named and described in the manifest (a
deployed APFL job's per-site evaluations of their personalized models): the transcript holds
everything the server saw, and an in-process server, which receives nothing beside the rounds, has none.

Arrays are ``.npy`` / ``.npz`` read with ``allow_pickle=False``; the manifest lists every file with
its size and SHA-256, and loading checks them, so a transcript round-trips bit for bit and a
damaged one is refused. A writer streams rounds to disk as they finish (nothing accumulates in
memory) into a temporary directory that replaces PATH only when the run completes, so a failed run
never destroys an earlier transcript. Ground truth never enters a transcript.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from protocols.errors import ProtocolError
from protocols.files import default_mode, unwritable_reason

FORMAT = "secure-afl/transcript"
VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class TranscriptError(ProtocolError, ValueError):
    """A transcript path that cannot be written or read: exists, is not a transcript, damaged, or another format."""


@dataclass(frozen=True)
class RoundView:
    """The server's view of one protocol round."""

    round_id: str
    protocol: str
    secure: bool  # False: the input messages carry each client's vector in the clear
    asked: tuple[int, ...]  # clients the round was run for
    included: tuple[int, ...]  # clients whose vectors are in the sum
    dropped: dict[str, tuple[int, ...]]  # stage → clients that left there
    messages: dict[str, dict[int, bytes]]  # stage → client → raw message the server received
    total: np.ndarray  # the decoded sum (float64)
    report: dict = field(default_factory=dict)  # public parameters of the round (encoding, threshold, …)

    def inputs(self) -> dict[int, np.ndarray]:
        """Each client's input message as the server can read it: float64 vectors (plaintext), uint64
        masked words (masking), or the ciphertext message's bytes (HE, which the server cannot open)."""
        from protocols.masking.messages import MaskedInput  # the message classes import the wire format, not this module
        from protocols.plaintext import PlaintextInput

        readers = {"plaintext": lambda data: PlaintextInput.from_bytes(data).values,
                   "mask": lambda data: MaskedInput.from_bytes(data).words}
        read = readers.get(self.protocol, lambda data: np.frombuffer(data, dtype=np.uint8))
        return {client: read(data) for client, data in self.messages.get("input", {}).items()}


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(a) for name, a in arrays.items()})
    return buffer.getvalue()


def is_transcript(path: str | Path) -> bool:
    manifest = Path(path) / MANIFEST
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def size_on_disk(path: str | Path) -> int:
    """Bytes of every file of a transcript, the manifest included."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def check_destination(path: str | Path, overwrite: bool) -> Path:
    """Refuse, before any work, a destination that exists (unless ``overwrite`` and it is a transcript)
    or whose parent cannot hold it. Nothing that is not a transcript is ever replaced."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise TranscriptError(f"transcript {str(path)!r} already exists; choose another path or pass --overwrite")
        if not is_transcript(path):
            raise TranscriptError(f"{str(path)!r} exists and is not a transcript; refusing to replace it")
    if (reason := unwritable_reason(path)) is not None:
        raise TranscriptError(f"cannot create transcript {str(path)!r}: {reason}")
    return path


class TranscriptWriter:
    """Streams a run's rounds to disk; ``close`` makes the transcript appear at its path atomically."""

    def __init__(self, path: str | Path, public: Mapping[str, Any], overwrite: bool = False):
        self.path = check_destination(path, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.partial-"))
        os.chmod(self._tmp, default_mode(0o777))  # mkdtemp makes it private to the user
        self._manifest = {"format": FORMAT, "version": VERSION, "complete": False, "public": dict(public), "rounds": [],
                          "disclosures": {}}
        self.bytes = 0
        self._write_manifest()

    def _putter(self, relative: Path, files: dict[str, dict]):
        """Writes a file under ``relative`` and lists its size and SHA-256 in ``files`` (the manifest's check)."""
        def put(name: str, data: bytes) -> str:
            target = self._tmp / relative / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files[name] = {"bytes": len(data), "sha256": _sha256(data)}
            self.bytes += len(data)
            return name

        return put

    def write_round(self, view: RoundView, spec: Mapping[str, Any], broadcast: Mapping[str, np.ndarray] | None = None):
        """One round: the protocol's view, the algorithm's public round spec and its broadcast arrays."""
        index = len(self._manifest["rounds"])
        relative = Path("rounds") / f"{index:04d}"
        files: dict[str, dict] = {}
        put = self._putter(relative, files)
        entry = {
            "index": index,
            "name": view.round_id,
            "protocol": view.protocol,
            "secure": view.secure,
            "spec": dict(spec),
            "asked": list(view.asked),
            "included": list(view.included),
            "dropped": {stage: list(ids) for stage, ids in view.dropped.items()},
            "report": view.report,
            "directory": relative.as_posix(),
            "total": put("total.npy", _npy_bytes(np.asarray(view.total, dtype=np.float64))),
            "broadcast": put("broadcast.npz", _npz_bytes(broadcast)) if broadcast else None,
            "messages": {},
        }
        for stage, by_client in view.messages.items():
            if not _NAME.match(stage):
                raise TranscriptError(f"stage name {stage!r} cannot name a transcript directory")
            entry["messages"][stage] = {str(client): put(f"messages/{stage}/{client}.bin", bytes(data))
                                        for client, data in sorted(by_client.items())}
        entry["files"] = files
        self._manifest["rounds"].append(entry)
        self._write_manifest()

    def write_disclosure(self, name: str, note: str, by_client: Mapping[int, bytes]) -> None:
        """Messages the server received outside any round (module docstring), raw, with what they are (``note``)."""
        if not _NAME.match(name) or name in self._manifest["disclosures"]:
            raise TranscriptError(f"disclosure name {name!r} is not a new directory name")
        relative = Path("disclosures") / name
        files: dict[str, dict] = {}
        put = self._putter(relative, files)
        messages = {str(client): put(f"{client}.bin", bytes(data)) for client, data in sorted(by_client.items())}
        self._manifest["disclosures"][name] = {"note": note, "directory": relative.as_posix(), "messages": messages,
                                               "files": files}
        self._write_manifest()

    def close(self) -> Path:
        """Mark complete and move into place (an existing transcript at the path is replaced only now)."""
        self._manifest["complete"] = True
        self._write_manifest()
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.old-"))
            os.replace(self.path, old / "previous")
        os.replace(self._tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Remove the partial transcript; the path keeps whatever it held before."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _write_manifest(self) -> None:
        text = json.dumps(self._manifest, indent=1, allow_nan=False)
        handle, tmp = tempfile.mkstemp(dir=self._tmp, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(tmp, default_mode(0o666))
        os.replace(tmp, self._tmp / MANIFEST)


def _checked(directory: Path, files: Mapping[str, dict], name: str) -> bytes:
    """A transcript file's bytes, refused unless its size and SHA-256 are the manifest's."""
    expected = files.get(name)
    path = directory / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TranscriptError(f"transcript file {path} cannot be read: {exc}") from exc
    if expected is None or len(data) != expected["bytes"] or _sha256(data) != expected["sha256"]:
        raise TranscriptError(f"transcript file {path} does not match its manifest (damaged or altered)")
    return data


class TranscriptRound:
    """One round of a loaded transcript; arrays and messages are read (and checked) on first use."""

    def __init__(self, root: Path, entry: dict):
        self._root = root / entry["directory"]
        self._entry = entry
        self.index: int = entry["index"]
        self.name: str = entry["name"]
        self.protocol: str = entry["protocol"]
        self.secure: bool = entry["secure"]
        self.spec: dict = entry["spec"]
        self.asked = tuple(entry["asked"])
        self.included = tuple(entry["included"])
        self.dropped = {stage: tuple(ids) for stage, ids in entry["dropped"].items()}
        self.report: dict = entry["report"]

    def _read(self, name: str) -> bytes:
        return _checked(self._root, self._entry["files"], name)

    @cached_property
    def total(self) -> np.ndarray:
        return np.load(io.BytesIO(self._read(self._entry["total"])), allow_pickle=False)

    @cached_property
    def broadcast(self) -> dict[str, np.ndarray]:
        if not self._entry["broadcast"]:
            return {}
        with np.load(io.BytesIO(self._read(self._entry["broadcast"])), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    @cached_property
    def messages(self) -> dict[str, dict[int, bytes]]:
        return {stage: {int(client): self._read(name) for client, name in by_client.items()}
                for stage, by_client in self._entry["messages"].items()}

    def view(self) -> RoundView:
        return RoundView(self.name, self.protocol, self.secure, self.asked, self.included, self.dropped,
                         self.messages, self.total, self.report)

    def inputs(self) -> dict[int, np.ndarray]:
        return self.view().inputs()


@dataclass(frozen=True)
class Transcript:
    """A run's transcript as loaded from disk: public knowledge and the rounds, in order."""

    path: Path
    public: dict
    rounds: tuple[TranscriptRound, ...]
    bytes: int
    disclosed: dict = field(default_factory=dict)  # the manifest's disclosures (``disclosure`` reads one)

    @classmethod
    def load(cls, path: str | Path) -> Transcript:
        root = Path(path)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError:
            raise TranscriptError(f"{str(root)!r} is not a transcript (no {MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise TranscriptError(f"the manifest of {str(root)!r} cannot be read: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise TranscriptError(f"{str(root)!r} is not a secure-afl transcript")
        if manifest.get("version") != VERSION:
            raise TranscriptError(f"transcript format version {manifest.get('version')}; this build reads version {VERSION}")
        if not manifest.get("complete"):
            raise TranscriptError(f"transcript {str(root)!r} is incomplete (its run did not finish)")
        rounds = tuple(TranscriptRound(root, entry) for entry in manifest["rounds"])
        disclosed = manifest.get("disclosures", {})  # none in a transcript written before they were kept
        size = sum(f["bytes"] for entry in [*manifest["rounds"], *disclosed.values()] for f in entry["files"].values())
        return cls(root, manifest["public"], rounds, size, disclosed)

    def disclosure(self, name: str) -> tuple[str, dict[int, bytes]]:
        """(what it is, {client: its raw message}) of a disclosure (module docstring), each file checked."""
        if name not in self.disclosed:
            raise KeyError(f"no disclosure {name!r} in this transcript")
        entry = self.disclosed[name]
        directory = self.path / entry["directory"]
        return entry["note"], {int(c): _checked(directory, entry["files"], f) for c, f in entry["messages"].items()}

    def round(self, name: str) -> TranscriptRound:
        """The first round of that name."""
        for entry in self.rounds:
            if entry.name == name:
                return entry
        raise KeyError(f"no round {name!r} in this transcript")
