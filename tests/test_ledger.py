"""The clients' contribution ledgers (protocols/ledger.py): one aggregation per statistic and job, whatever the
server calls the round, surviving a client restart; the honest path, dropouts included, unchanged."""

import json

import numpy as np
import pytest

from protocols import (
    ContributionLedger, FixedPoint, LedgerError, MaskingProtocol, Statistic, StatisticReusedError, ThresholdError,
    broadcast_digest, choose_parameters, make_protocol,
)
from protocols.he import HEClient
from protocols.masking import MaskingClient, simulate_round
from protocols.masking.client import State
from protocols.masking.simulation import enrol_for
from protocols.terms import RoundTerms
from attacks.protocol.jobs import BOUND, HEJob, MaskingJob, vectors

JOB, OTHER_JOB = b"j" * 32, b"k" * 32
MODEL = broadcast_digest({"w": np.arange(3.0)})


def statistic(round_id="r", broadcast=None, vector=np.zeros(4), job=JOB) -> Statistic:
    terms = RoundTerms(round_id, BOUND) if broadcast is None else RoundTerms(round_id, BOUND, broadcast)
    return Statistic.of(job, terms, vector)


def test_a_statistic_is_released_once_per_job_whatever_the_server_calls_it(tmp_path):
    ledger = ContributionLedger.in_directory(tmp_path, 3)
    ledger.claim(statistic("r", MODEL, np.ones(4)), b"s" * 32)
    repeats = {
        "same name, other model and vector": statistic("r", broadcast_digest({"w": np.ones(3)}), np.full(4, 2.0)),
        "renamed, same model": statistic("r-again", MODEL, np.full(4, 2.0)),
        "renamed, no model, same vector": statistic("r-again", None, np.ones(4)),
    }
    for what, repeat in repeats.items():
        with pytest.raises(StatisticReusedError, match="client 3 refuses round"):
            ledger.check(repeat)
    ledger.check(statistic("next", None, np.full(4, 2.0)))  # another statistic of the job
    ledger.check(statistic("r", MODEL, np.ones(4), job=OTHER_JOB))  # another job's roster: another scope
    (line,) = (tmp_path / "client-3.jsonl").read_text().splitlines()
    assert json.loads(line) == {"job": JOB.hex(), "round": "r", "broadcast": MODEL.hex(), "session": (b"s" * 32).hex(),
                                "content": statistic("r", MODEL, np.ones(4)).content}


def test_a_new_ledger_object_on_the_same_file_remembers_and_a_damaged_file_refuses_everything(tmp_path):
    ContributionLedger(tmp_path / "c.jsonl").claim(statistic("a"), b"s" * 32)
    restarted = ContributionLedger(tmp_path / "c.jsonl")
    assert [s.round_id for s in restarted.entries()] == ["a"]
    with pytest.raises(StatisticReusedError):
        restarted.claim(statistic("a", vector=np.ones(4)), b"t" * 32)
    assert len(restarted.entries()) == 1  # a refused claim writes nothing
    with open(tmp_path / "c.jsonl", "a") as file:
        file.write('{"round": "b"\n')  # a torn or edited line
    with pytest.raises(LedgerError, match="line 2 .* malformed"):
        restarted.check(statistic("fresh", vector=np.full(4, 5.0)))


@pytest.mark.parametrize("name", ["mask", "he-bfv"])
def test_a_retried_round_is_refused_typed_under_any_round_id(name, tmp_path):
    vs = vectors(6)
    protocol = make_protocol(name, ledger_dir=tmp_path)
    protocol.aggregate("r", vs, BOUND, broadcast_digest=MODEL)
    for round_id in ("r", "r/retry"):  # the same name, or a new name for the same model
        with pytest.raises(StatisticReusedError, match="refuses round"):
            protocol.aggregate(round_id, vs, BOUND, drop={"input": [2]}, broadcast_digest=MODEL)
    with pytest.raises(StatisticReusedError, match="the vector it already released"):
        protocol.aggregate("r/retry", vs, BOUND, drop={"input": [2]})  # no model: the vector itself gives it away
    assert len(ContributionLedger.in_directory(tmp_path, 2).entries()) == 1


def test_a_client_with_the_statistic_on_record_refuses_before_anything_leaves_it(tmp_path):
    job = MaskingJob(n=6)
    ledger = ContributionLedger.in_directory(tmp_path, 0)
    ledger.claim(Statistic.of(job.roster.digest, job.terms, job.vectors[0]), b"s" * 32)
    client = MaskingClient(job.members[0], job.vectors[0], job.terms, ledger)
    with pytest.raises(StatisticReusedError):
        client.advertise(job.server.setup_message())  # not even its round keys
    assert client.state is State.ABORTED
    he = HEJob()
    ledger = ContributionLedger.in_directory(tmp_path, 1)
    ledger.claim(Statistic.of(he.roster.digest, he.terms, he.vectors[1]), b"s" * 32)
    with pytest.raises(StatisticReusedError):
        HEClient(he.members[1], he.vectors[1], he.terms, he.public, ledger).encrypt(he.setup())


def test_restarted_clients_refuse_and_a_round_given_up_before_the_input_spends_nothing(tmp_path):
    n, terms = 8, RoundTerms("r", BOUND)
    vs = vectors(n, seed=2)
    encoding, parameters = FixedPoint.for_round(n, BOUND), choose_parameters(n)
    members = enrol_for(vs, encoding, parameters)

    def ledgers():  # what a restarted process opens: new objects on the same files
        return {c: ContributionLedger.in_directory(tmp_path, c) for c in vs}

    with pytest.raises(ThresholdError):  # too few unmask responses: the round fails after the inputs were sent
        simulate_round(terms, vs, encoding, parameters, {"share": [0], "unmask": [1, 2, 3, 4]}, members, ledgers())
    assert ledgers()[0].entries() == []  # left before its input: nothing released, nothing spent
    assert all([s.round_id for s in ledgers()[c].entries()] == ["r"] for c in range(1, n))  # spent, though unsummed
    with pytest.raises(StatisticReusedError, match="client [1-7] refuses"):
        simulate_round(terms, vs, encoding, parameters, {"input": [5]}, members, ledgers())
    ledgers()[0].check(Statistic.of(members[0].roster.digest, terms, vs[0]))  # client 0 may still contribute


@pytest.mark.parametrize("name, drop", [("mask", {"share": [1], "unmask": [3]}), ("he-bfv", {"input": [4]})])
def test_the_honest_path_with_dropouts_is_unchanged(name, drop, tmp_path):
    n = 10
    options = {"dropout": {"input": 0.1}} if name == "mask" else {}  # one more client leaves each masked round
    protocol = make_protocol(name, ledger_dir=tmp_path, min_clients=4, **options)
    included = set(range(n))
    for seed, (round_id, model) in enumerate([("a", None), ("b", MODEL), ("c", broadcast_digest({"w": np.ones(3)}))]):
        vs = {c: v for c, v in vectors(n, seed=seed).items() if c in included}
        result = protocol.aggregate(round_id, vs, BOUND, drop=drop if seed == 0 else None, broadcast_digest=model)
        np.testing.assert_allclose(result.total, np.sum([vs[c] for c in sorted(result.included)], axis=0), atol=1e-9)
        assert set(result.included) < set(vs) or seed  # the first round lost clients
        included = set(result.included)  # dropped clients stay out of later rounds, as the runner does
    spent = {c: [s.round_id for s in ContributionLedger.in_directory(tmp_path, c).entries()] for c in range(n)}
    assert all(spent[c] == ["a", "b", "c"] for c in included)
    assert any(rounds == [] for rounds in spent.values())  # left the first round before its input


def test_clients_without_the_defence_give_a_dropped_clients_vector_away():
    vs = vectors(6)
    protocol = MaskingProtocol(ledger=False)
    full, without = (protocol.aggregate("r", vs, BOUND, drop=drop).total for drop in ({}, {"input": [2]}))
    np.testing.assert_allclose(full - without, vs[2], atol=1e-9)
