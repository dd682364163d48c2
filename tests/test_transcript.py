"""Transcripts: what the server saw, on disk, bit for bit; never a client's true vector under masking."""

import json
import os

import numpy as np
import pytest

from protocols import MaskingProtocol, PlaintextProtocol, Transcript, TranscriptError, TranscriptWriter, make_protocol
from protocols.encoding import FixedPoint


def vectors(n=5, length=300, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-2, 2, length) for k in range(n)}


def spec(name, length):
    return {"name": name, "length": length, "bound": 2.0, "layout": {"kind": "test"}, "participants": None,
            "broadcast": ["w"]}


def test_round_trip_is_bit_for_bit(tmp_path):
    vs = vectors()
    views = [PlaintextProtocol(record=True).aggregate("a", vs, 2.0, drop={"input": [3]}).view,
             MaskingProtocol(record=True, dropout={"share": 0.2}).aggregate("b", vs, 2.0).view]
    broadcast = {"w": np.arange(12.0).reshape(3, 4)}
    with TranscriptWriter(tmp_path / "t", {"clients": list(vs)}) as writer:
        for view in views:
            writer.write_round(view, spec(view.round_id, 300), broadcast)
    loaded = Transcript.load(tmp_path / "t")
    assert loaded.public == {"clients": list(vs)} and [r.name for r in loaded.rounds] == ["a", "b"]
    for view, entry in zip(views, loaded.rounds):
        assert (entry.protocol, entry.secure, entry.asked, entry.included, entry.dropped) == \
            (view.protocol, view.secure, view.asked, view.included, view.dropped)
        assert entry.messages == view.messages  # every raw message, every stage, byte for byte
        assert entry.total.tobytes() == view.total.tobytes()
        assert entry.broadcast["w"].tobytes() == broadcast["w"].tobytes()
        assert json.loads(json.dumps(view.report)) == entry.report
    plain = loaded.rounds[0].inputs()
    assert set(plain) == {0, 1, 2, 4} and all(plain[k].tobytes() == vs[k].tobytes() for k in plain)
    assert loaded.rounds[1].messages.keys() == {"advertise", "share", "input", "consistency", "unmask"}
    assert loaded.bytes == sum(p.stat().st_size for p in (tmp_path / "t").rglob("*") if p.is_file() and p.name != "manifest.json")


def test_a_damaged_file_is_refused(tmp_path):
    with TranscriptWriter(tmp_path / "t", {}) as writer:
        writer.write_round(PlaintextProtocol(record=True).aggregate("a", vectors(), 2.0).view, spec("a", 300))
    target = tmp_path / "t" / "rounds" / "0000" / "messages" / "input" / "2.bin"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    loaded = Transcript.load(tmp_path / "t")
    with pytest.raises(TranscriptError, match="does not match its manifest"):
        loaded.rounds[0].messages


def test_a_disclosure_round_trips_is_checked_and_names_what_it_is(tmp_path):
    """What the server received beside the rounds is kept raw with its description; a transcript without any (an
    in-process run's, or one written before they were kept) has none; a damaged disclosure is refused."""
    sent = {2: b"site two", 0: b"site zero"}
    with TranscriptWriter(tmp_path / "t", {}) as writer:
        writer.write_round(PlaintextProtocol(record=True).aggregate("a", vectors(), 2.0).view, spec("a", 300))
        writer.write_disclosure("personalize", "each site's evaluation", sent)
        with pytest.raises(TranscriptError, match="not a new directory name"):
            writer.write_disclosure("personalize", "again", sent)
        with pytest.raises(TranscriptError, match="not a new directory name"):
            writer.write_disclosure("../escape", "outside", sent)
    loaded = Transcript.load(tmp_path / "t")
    assert loaded.disclosure("personalize") == ("each site's evaluation", sent)
    assert loaded.bytes == sum(p.stat().st_size for p in (tmp_path / "t").rglob("*") if p.is_file() and p.name != "manifest.json")
    with pytest.raises(KeyError, match="no disclosure 'other'"):
        loaded.disclosure("other")
    (tmp_path / "t" / "disclosures" / "personalize" / "2.bin").write_bytes(b"site twO")
    with pytest.raises(TranscriptError, match="does not match its manifest"):
        Transcript.load(tmp_path / "t").disclosure("personalize")
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    del manifest["disclosures"]
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(manifest))
    assert Transcript.load(tmp_path / "t").disclosed == {}


def test_destinations_are_checked_and_nothing_stored_is_lost(tmp_path):
    view = PlaintextProtocol(record=True).aggregate("a", vectors(), 2.0).view
    with TranscriptWriter(tmp_path / "t", {"run": 1}) as writer:
        writer.write_round(view, spec("a", 300))
    with pytest.raises(TranscriptError, match="already exists"):
        TranscriptWriter(tmp_path / "t", {})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(TranscriptError, match="not a transcript"):
        TranscriptWriter(tmp_path / "notes", {}, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TranscriptError, match="is not a directory"):
        TranscriptWriter(tmp_path / "file" / "t", {})
    # a run that fails half-way leaves the earlier transcript as it was, and no partial directory
    with pytest.raises(RuntimeError):
        with TranscriptWriter(tmp_path / "t", {"run": 2}, overwrite=True) as writer:
            writer.write_round(view, spec("a", 300))
            raise RuntimeError("the run failed")
    assert Transcript.load(tmp_path / "t").public == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "notes", "t"]
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with TranscriptWriter(tmp_path / "t", {"run": 3}, overwrite=True) as writer:
        writer.write_round(view, spec("a", 300))
    assert Transcript.load(tmp_path / "t").public == {"run": 3}


def test_incomplete_and_foreign_transcripts_are_refused(tmp_path):
    writer = TranscriptWriter(tmp_path / "t", {})
    partial = next(tmp_path.glob(".t.partial-*"))
    with pytest.raises(TranscriptError, match="incomplete"):
        Transcript.load(partial)
    writer.abort()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(TranscriptError, match="not a secure-afl transcript"):
        Transcript.load(tmp_path / "other")
    with pytest.raises(TranscriptError, match="no manifest"):
        Transcript.load(tmp_path / "missing")


def test_transcript_files_get_the_users_normal_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        with TranscriptWriter(tmp_path / "t", {}) as writer:
            writer.write_round(PlaintextProtocol(record=True).aggregate("a", vectors(), 2.0).view, spec("a", 300))
    finally:
        os.umask(previous)
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "t" / "manifest.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["mask", "he-bfv"])
def test_a_secure_transcript_holds_no_clients_true_vector(tmp_path, name):
    """Neither the float64 bytes nor the fixed-point words of any client's vector appear in any file."""
    vs = vectors(4, length=600, seed=1)
    view = make_protocol(name, record=True).aggregate("a", vs, 2.0).view
    with TranscriptWriter(tmp_path / "t", {}) as writer:
        writer.write_round(view, spec("a", 600))
    encoding = FixedPoint.for_round(4, 2.0)
    patterns = [p for v in vs.values() for p in (v[100:104].tobytes(), encoding.encode(v)[100:104].tobytes())]
    files = [p.read_bytes() for p in (tmp_path / "t").rglob("*.bin")]
    assert files and not any(pattern in data for pattern in patterns for data in files)
    # the plaintext transcript of the same round does hold them: the check can fail
    plain = PlaintextProtocol(record=True).aggregate("a", vs, 2.0).view
    assert all(any(v[100:104].tobytes() in m for m in plain.messages["input"].values()) for v in vs.values())
