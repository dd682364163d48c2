"""Identities, the roster file the operator distributes, signed statements, and round terms."""

import json

import numpy as np
import pytest

from protocols import AuthenticationError, Identity, RosterError, enrol
from protocols.identity import Roster
from protocols.terms import EMPTY_BROADCAST, RoundTerms, broadcast_digest


def job():
    return enrol("job-1", [3, 1, 2], {"protocol": {"name": "mask", "threshold": None}, "job": {"gamma": 0.1}}, key_holder=1)


def test_roster_file_round_trips_and_its_digest_is_stable(tmp_path):
    roster, identities = job()
    loaded = Roster.load(roster.save(tmp_path / "roster.json"))
    assert loaded == roster and loaded.digest == roster.digest and loaded.config_sha256 == roster.config_sha256
    document = json.loads((tmp_path / "roster.json").read_text())
    assert document["format"] == "secure-afl/roster" and document["version"] == 1 and set(document["clients"]) == {"1", "2", "3"}
    for client, identity in identities.items():
        assert Identity.from_json(identity.to_json("job-1"), roster).public == roster.clients[client]


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["config"]["job"].update(gamma=0.2), "does not match its configuration"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(format="pickle"), "not a secure-afl roster"),
    (lambda d: d["clients"].update({"4": "00" * 31}), "keys 32 bytes"),
    (lambda d: d["clients"].update({"4": d["clients"]["1"]}), "same identity key"),
    (lambda d: d.update(key_holder=9), "key holder 9 is not in the roster"),
])
def test_altered_or_foreign_rosters_are_refused(tmp_path, edit, match):
    roster, _ = job()
    document = json.loads(roster.to_json())
    edit(document)
    with pytest.raises(RosterError, match=match):
        Roster.from_json(json.dumps(document))


def test_roster_refuses_non_json_configurations_and_nan():
    with pytest.raises(RosterError, match="plain JSON"):
        enrol("j", [0], {"bound": float("nan")})
    roster, _ = job()
    with pytest.raises(RosterError, match="not JSON"):
        Roster.from_json(roster.to_json().replace('"gamma": 0.1', '"gamma": NaN'))


def test_identity_of_another_job_or_key_is_refused():
    roster, identities = job()
    other, strangers = enrol("job-2", [1], {})
    with pytest.raises(RosterError, match="for job 'job-2'"):
        Identity.from_json(strangers[1].to_json("job-2"), roster)
    forged = json.loads(strangers[1].to_json("job-1"))
    with pytest.raises(RosterError, match="not the one the roster lists"):
        Identity.from_json(json.dumps(forged), roster)


def test_signatures_bind_session_stage_sender_and_content():
    roster, identities = job()
    digest = b"d" * 32
    signature = identities[2].sign(b"session", "input", digest)
    roster.verify(b"session", "input", 2, digest, signature)
    for session, stage, sender, content in [(b"other", "input", 2, digest), (b"session", "unmask", 2, digest),
                                            (b"session", "input", 3, digest), (b"session", "input", 2, b"e" * 32)]:
        with pytest.raises(AuthenticationError, match="does not verify"):
            roster.verify(session, stage, sender, content, signature)
    with pytest.raises(AuthenticationError, match="client 7 is not in the job's roster"):
        roster.verify(b"session", "input", 7, digest, signature)


def test_broadcast_digest_names_every_array_and_terms_refuse_bad_bounds():
    w = np.arange(6.0).reshape(2, 3)
    assert broadcast_digest({"w": w}) == broadcast_digest({"w": w.copy()})
    assert len({broadcast_digest({"w": w}), broadcast_digest({"v": w}), broadcast_digest({"w": w.T}),
                broadcast_digest({"w": w.astype(np.float32)}), broadcast_digest({"w": w + 1}), EMPTY_BROADCAST}) == 6
    for bound in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="positive finite"):
            RoundTerms("r", bound)
