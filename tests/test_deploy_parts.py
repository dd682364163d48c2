"""The deployment's parts that need no running federation: wire messages, job files, refusals, process cleanup."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from protocols import MalformedMessageError, RosterError, make_protocol
from secure_afl.config import RunConfig
from secure_afl.deploy.messages import NodeHello, RoundCall
from secure_afl.deploy.site import Site, SiteData, check_deployable, read_job, write_job
from secure_afl.errors import ConfigError
from secure_afl.runner import public_config


def test_a_round_call_round_trips_its_spec_and_refuses_damage():
    broadcast = {"w": np.arange(6, dtype=np.float64).reshape(2, 3) - 2.5, "b": np.array([1e-300, -7.0])}
    call = RoundCall("deepafl/block-1", 40, 3.5, broadcast)
    back = RoundCall.from_bytes(call.to_bytes())
    assert (back.name, back.length, back.bound) == ("deepafl/block-1", 40, 3.5)
    assert sorted(back.broadcast) == ["b", "w"]
    assert all(np.array_equal(back.broadcast[k], broadcast[k]) and back.broadcast[k].shape == broadcast[k].shape
               for k in broadcast)
    assert back.spec().broadcast.keys() == broadcast.keys()
    data = call.to_bytes()
    with pytest.raises(MalformedMessageError):
        RoundCall.from_bytes(data[:-1])
    with pytest.raises(MalformedMessageError, match="kind"):
        RoundCall.from_bytes(NodeHello(1, 2, 3).to_bytes())
    assert NodeHello.from_bytes(NodeHello(7, 1280, 128).to_bytes()) == NodeHello(7, 1280, 128)


def test_a_job_file_round_trips_and_a_foreign_or_unknown_one_is_refused(tmp_path):
    config = RunConfig(clients=3, dataset="digits", gamma=0.5, dropout={})
    assert read_job(write_job(tmp_path / "job.json", config)) == config
    (tmp_path / "other.json").write_text('{"format": "secure-afl/roster", "version": 1}')
    with pytest.raises(ConfigError, match="not a secure-afl job file"):
        read_job(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text('{"format": "secure-afl/deploy-job", "version": 1, "config": {"gama": 1}}')
    with pytest.raises(ConfigError, match="gama"):
        read_job(tmp_path / "bad.json")
    site = Site.from_node_config({"job": str(tmp_path / "job.json"), "partition-id": 1, "num-partitions": 4})
    with pytest.raises(ConfigError, match="num-partitions 4"):
        site.job()
    with pytest.raises(ConfigError, match="roster=PATH"):
        site.member()
    with pytest.raises(ConfigError, match="partition-id 5"):
        Site.from_node_config({"job": "j", "partition-id": 5, "num-partitions": 4})


@pytest.mark.parametrize("options, refused", [
    ({"algorithm": "pfedacnnl"}, "pfedacnnl is not deployed yet: its clients train on pixels"),
    ({"algorithm": "fedavg-cnn"}, "fedavg-cnn is not deployed yet: its clients train on pixels"),
    ({"protocol": "he-ckks-approx"}, "he-ckks-approx is not deployed: the key holder's decryption"),
    ({"dropout": {"input": 0.1}}, "--crash"),
])
def test_jobs_the_deployment_cannot_run_yet_are_refused_before_anything_starts(options, refused):
    with pytest.raises(ConfigError, match=refused):
        check_deployable(RunConfig(**options))


@pytest.mark.parametrize("name", ["afl", "apfl", "deepafl", "fedavg", "fedprox"])
def test_every_algorithm_on_features_deploys_whatever_its_rounds_and_apfl_with_its_personal_models(name):
    check_deployable(RunConfig(algorithm=name, protocol="mask"))


def test_an_algorithm_that_personalizes_from_more_than_the_global_model_is_refused():
    from dataclasses import replace as change

    from secure_afl.algorithms import registry
    from secure_afl.deploy.site import undeployable

    apfl = registry.algorithm("apfl")
    registry.ALGORITHMS["apfl-server-state"] = change(apfl, name="apfl-server-state", personalize_client=None)
    try:
        assert "beyond the global model" in undeployable(RunConfig(algorithm="apfl-server-state"))
    finally:
        del registry.ALGORITHMS["apfl-server-state"]


def test_the_server_app_drives_a_round_of_every_protocol_that_does_not_leak_and_only_those_deploy():
    """A protocol deploys exactly when it has no known leak (protocols/base.py: approximate CKKS's noisy decryption
    lets the server recover the key): the server app has a round for each of those, so a protocol added to
    protocols/ without one fails here rather than on a user's federation."""
    pytest.importorskip("flwr")
    from protocols import PROTOCOLS
    from secure_afl.deploy.server_app import ROUNDS

    assert set(ROUNDS) == {name for name, protocol in PROTOCOLS.items() if protocol.leak is None}
    for name, protocol in PROTOCOLS.items():
        if protocol.leak is None:
            check_deployable(RunConfig(protocol=name))
        else:
            with pytest.raises(ConfigError, match="recovered the secret key"):
                check_deployable(RunConfig(protocol=name))


@pytest.mark.parametrize("name", ["afl", "apfl", "deepafl", "fedavg", "fedprox"])
@pytest.mark.parametrize("protocol", ["plaintext", "mask", "he-ckks"])
def test_dp_on_the_statistics_and_dp_sgd_deploy_with_every_protocol(name, protocol):
    check_deployable(RunConfig(algorithm=name, protocol=protocol, dp_epsilon=2.0))


def test_a_protocol_adopts_only_the_roster_of_its_own_job():
    config = RunConfig(clients=3)
    operator = make_protocol("mask", **config.protocol_options())
    operator.enrol(range(3), job=public_config(config))
    server = make_protocol("mask", **config.protocol_options())
    server.adopt(operator.roster, range(3), job=public_config(config))
    assert server.roster is operator.roster
    other = make_protocol("mask", **config.protocol_options())
    with pytest.raises(RosterError, match="not this job's"):
        other.adopt(operator.roster, range(3), job=public_config(replace(config, gamma=0.2)))
    with pytest.raises(RosterError, match="not this job's"):
        other.adopt(operator.roster, range(4), job=public_config(config))


def test_stopping_a_deployment_ends_its_processes_and_theirs_by_pid(tmp_path):
    pytest.importorskip("flwr")
    from secure_afl.deploy.local import Processes, _alive

    processes = Processes({}, tmp_path)
    # a process that starts a child in a new session of its own, as the SuperLink starts its SuperExec
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], " \
             "start_new_session=True); time.sleep(60)"
    processes.start("parent", [sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while len(processes.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = processes.pids()
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    processes.stop(grace=2.0)
    assert not any(_alive(pid) for pid in pids)


def test_stopping_a_deployment_also_ends_a_process_that_left_its_tree(tmp_path):
    """A child whose parent died is re-parented out of the deployment's tree (a crashed node's ClientApp, Ray's
    daemons): ``stop`` still finds it, by the marker every process of the deployment inherits."""
    pytest.importorskip("flwr")
    from secure_afl.deploy.local import Processes, _alive

    processes = Processes({}, tmp_path)
    orphan_pid = tmp_path / "orphan.pid"
    script = ("import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
              f" open({str(orphan_pid)!r}, 'w').write(str(child.pid))")  # the parent exits at once
    processes.start("parent", [sys.executable, "-c", script]).wait(timeout=30)
    orphan = int(orphan_pid.read_text())
    assert _alive(orphan) and orphan not in processes.pids() and processes.strays() == [orphan]
    processes.stop(grace=2.0)
    assert not _alive(orphan)


def test_a_flower_message_carries_our_wire_messages_unchanged():
    pytest.importorskip("flwr")
    from flwr.app import RecordDict

    from secure_afl.deploy.transport import content, parts

    wire = [NodeHello(1, 2, 3).to_bytes(), b"", bytes(range(256)) * 50]
    # a Message outside a run cannot be built; ``parts`` reads only its content
    assert parts(SimpleNamespace(content=content(*wire))) == wire
    with pytest.raises(MalformedMessageError):
        parts(SimpleNamespace(content=RecordDict()))


def test_deploy_issue_writes_each_site_its_private_identity_and_node_config(tmp_path, capsys):
    from protocols import Roster
    from protocols.identity import Identity
    from secure_afl.cli import main

    options = ["--clients", "3", "--dataset", "digits", "--resolution", "32", "--partition", "iid"]
    assert main(["deploy", "issue", "--dir", str(tmp_path / "job"), *options]) == 0
    out = capsys.readouterr().out
    roster = Roster.load(tmp_path / "job" / "roster.json")
    assert sorted(roster.clients) == [0, 1, 2]
    for k in range(3):
        identity = tmp_path / "job" / "sites" / str(k) / "identity.json"
        assert identity.stat().st_mode & 0o777 == 0o600
        assert Identity.from_json(identity.read_text(), roster).client == k
        assert f'partition-id={k} num-partitions=3 job="{tmp_path / "job" / "job.json"}"' in out
    assert read_job(tmp_path / "job" / "job.json").clients == 3
    assert main(["deploy", "issue", "--dir", str(tmp_path / "job"), *options]) == 2  # never over an earlier job
    assert capsys.readouterr().err.startswith("secure-afl: error: --dir")


def site_context(x: np.ndarray, y: np.ndarray):
    """A node's Context with the site's rows loaded (``client_app._rows``), as after its hello."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

    from secure_afl.deploy.client_app import DATA, FACTS

    state = RecordDict({DATA: ArrayRecord({"x": Array(x), "y": Array(y)}),
                        FACTS: ConfigRecord({"num_classes": 10, "train_size": 100, "backbone_dim": x.shape[1]})})
    return Context(run_id=1, node_id=1, node_config={}, state=state, run_config={})


def site_rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # rows within --max-norm 1, as the feature map leaves them
    return x, rng.integers(0, 10, size=20)


def test_a_site_answers_only_the_round_it_derives_from_the_job_itself(tmp_path):
    pytest.importorskip("flwr")
    from protocols import ProtocolAbort
    from secure_afl.deploy.client_app import _vector
    from secure_afl.statistics import packed_statistics

    write_job(tmp_path / "job.json", RunConfig(clients=3, protocol="plaintext", dataset="digits"))
    site = Site.from_node_config({"job": str(tmp_path / "job.json"), "partition-id": 1, "num-partitions": 3})
    x, y = site_rows()
    server, _ = site.algorithm(SiteData(x, y, 10, 100, 8))
    own = server.next_round()
    for name, bound, broadcast in ((own.name, 2 * own.bound, {}), ("afl/other", own.bound, {}),
                                   (own.name, own.bound, {"w": np.zeros(2)})):
        with pytest.raises(ProtocolAbort, match="not the round this site derives"):
            _vector(site, site_context(x, y), RoundCall(name, own.length, bound, broadcast).to_bytes())
    ctx = site_context(x, y)
    spec, vector = _vector(site, ctx, RoundCall(own.name, own.length, own.bound, {}).to_bytes())
    assert spec.bound == own.bound and np.array_equal(vector, packed_statistics(x, y, 10))
    with pytest.raises(ProtocolAbort, match="the job has 1 rounds"):  # AFL's one round is spent
        _vector(site, ctx, RoundCall("afl/again", own.length, own.bound, {}).to_bytes())


def test_a_deepafl_site_rebuilt_for_every_round_answers_exactly_as_its_in_process_client(tmp_path):
    """A fresh process per round: the site replays the calls it answered through a new client, so every round's
    vector equals, bit for bit, that of one long-lived client given the same calls (a call carries the broadcast
    C-ordered, which may change the last bit of a product against the server's own array); a repeat of the last call gets the same vector again,
    and a round answered before, one out of order or one beyond the job's 2T + 1 are refused."""
    pytest.importorskip("flwr")
    from protocols import ProtocolAbort
    from secure_afl.deploy.client_app import _vector

    config = RunConfig(clients=3, protocol="plaintext", dataset="digits", algorithm="deepafl", depth=2, deep_width=16,
                       residual_width=12)
    write_job(tmp_path / "job.json", config)
    site = Site.from_node_config({"job": str(tmp_path / "job.json"), "partition-id": 0, "num-partitions": 3})
    x, y = site_rows(1)
    server, client = site.algorithm(SiteData(x, y, 10, 100, 8))  # the in-process pair: one client for every round
    ctx, calls = site_context(x, y), []
    while (spec := server.next_round()) is not None:
        calls.append(RoundCall.of(spec).to_bytes())
        expected = client.contribute(RoundCall.from_bytes(calls[-1]).spec())
        _, vector = _vector(site, ctx, calls[-1])
        assert np.array_equal(vector, expected)
        assert np.array_equal(_vector(site, ctx, calls[-1])[1], expected)  # the key holder's open, then encrypt
        server.receive(spec, 3.0 * expected)  # a sum the server could receive; the later broadcasts follow from it
    assert len(calls) == 5 and server.model().residuals  # 2T + 1 rounds, residual blocks made
    with pytest.raises(ProtocolAbort, match="answers each once"):
        _vector(site, ctx, calls[1])
    beyond = RoundCall.from_bytes(calls[-1])
    with pytest.raises(ProtocolAbort, match="the job has 5 rounds"):
        _vector(site, ctx, RoundCall("deepafl/classifier/3", beyond.length, beyond.bound, beyond.broadcast).to_bytes())
    skipping = site_context(x, y)
    _vector(site, skipping, calls[0])
    with pytest.raises(ConfigError, match="out of order"):  # the client itself refuses a round it cannot answer
        _vector(site, skipping, calls[2])


def test_a_dp_site_rebuilt_for_every_round_repeats_each_release_and_draws_its_own_noise(tmp_path):
    """Under DP every message rebuilds the site's client, which draws its noise under the node's secret key: every
    round of DeepAFL's 2T + 1 (replayed before each later one) and a repeated call get the same release, never a
    second one; another site's key draws other noise, and no key ever appears in what the site sends."""
    pytest.importorskip("flwr")
    from secure_afl.deploy.client_app import NOISE_KEY, ROUNDS, _vector

    config = RunConfig(clients=3, protocol="plaintext", dataset="digits", algorithm="deepafl", depth=1, deep_width=16,
                       residual_width=12, dp_epsilon=4.0)
    write_job(tmp_path / "job.json", config)
    site = Site.from_node_config({"job": str(tmp_path / "job.json"), "partition-id": 0, "num-partitions": 3})
    x, y = site_rows(1)
    server, _ = site.algorithm(SiteData(x, y, 10, 100, 8))
    ctx, other = site_context(x, y), site_context(x, y)
    while (spec := server.next_round()) is not None:
        call = RoundCall.of(spec).to_bytes()
        _, vector = _vector(site, ctx, call)
        assert np.array_equal(_vector(site, ctx, call)[1], vector)  # a repeat: the same release
        assert not np.allclose(_vector(site, other, call)[1], vector)  # another key: other noise
        key = bytes(ctx.state.config_records[NOISE_KEY]["key"])
        assert len(key) == 32 and key not in vector.tobytes()
        server.receive(spec, 3.0 * vector)
    assert len(ctx.state.array_records[ROUNDS]) == 3  # every round answered, each replayed before the next


def test_a_dp_sgd_site_rebuilt_for_every_round_repeats_each_release_and_draws_its_own_noise(tmp_path):
    """FedAvg under DP-SGD: Opacus draws a round's Poisson batches and noise from a torch generator the site seeds from
    its secret key and the round's name, so a repeated call, and every round after the replays of the earlier ones,
    gives exactly the release of one client holding that key; another key draws other noise, the key is never sent,
    and without a key (one process) every contribution draws afresh."""
    pytest.importorskip("flwr")
    from secure_afl.deploy.client_app import NOISE_KEY, ROUNDS, _vector

    config = RunConfig(clients=3, protocol="plaintext", dataset="digits", algorithm="fedavg", rounds=3,
                       local_epochs=1, local_batch=8, lr=1.0, dp_noise=1.0)  # z given: no calibration per rebuild
    write_job(tmp_path / "job.json", config)
    site = Site.from_node_config({"job": str(tmp_path / "job.json"), "partition-id": 0, "num-partitions": 3})
    x, y = site_rows(1)
    data = SiteData(x, y, 10, 100, 8)
    server, fresh = site.algorithm(data)  # no key: the in-process client
    ctx, other = site_context(x, y), site_context(x, y)
    keyed = None
    while (spec := server.next_round()) is not None:
        call = RoundCall.of(spec).to_bytes()
        _, vector = _vector(site, ctx, call)
        key = bytes(ctx.state.config_records[NOISE_KEY]["key"])
        keyed = keyed or site.algorithm(data, key)[1]  # one client with the site's key answering every round
        assert keyed.config.dp.noise_key == key and key.hex() not in repr(keyed.config)
        assert np.array_equal(keyed.contribute(RoundCall.from_bytes(call).spec()), vector)
        assert np.array_equal(_vector(site, ctx, call)[1], vector)  # a repeat: the same release
        assert vector[-1] == len(y) and vector.shape == (spec.length,)  # the weight n_k is exact
        assert not np.allclose(_vector(site, other, call)[1][:-1], vector[:-1])  # another key: other noise
        assert len(key) == 32 and key not in vector.tobytes()
        one, two = (fresh.contribute(RoundCall.from_bytes(call).spec()) for _ in range(2))
        assert not np.allclose(one[:-1], two[:-1])
        server.receive(spec, 3.0 * vector)
    assert len(ctx.state.array_records[ROUNDS]) == 3


def test_the_deployed_server_and_a_site_derive_the_same_round_and_a_site_without_rows_refuses(tmp_path):
    """Both build through the registry (runner.site_algorithm); a site the minimum-count rule emptied sends nothing."""
    from secure_afl.runner import site_algorithm

    config = RunConfig(clients=3, protocol="plaintext", dataset="digits")
    write_job(tmp_path / "job.json", config)
    site = Site.from_node_config({"job": str(tmp_path / "job.json"), "partition-id": 2, "num-partitions": 3})
    x = np.full((4, 8), 0.25, dtype=np.float32)
    site_server, client = site.algorithm(SiteData(x, np.array([0, 1, 1, 3]), 10, 100, 8))
    server, none = site_algorithm(config, 3, 8, 10, 100)
    ours, theirs = server.next_round(), site_server.next_round()
    assert none is None and client is not None
    assert (ours.name, ours.length, ours.bound) == (theirs.name, theirs.length, theirs.bound)
    with pytest.raises(ConfigError, match="withheld every row of this site"):
        site.algorithm(SiteData(x[:0], np.zeros(0, dtype=np.int64), 10, 100, 8))


def test_a_key_holder_restored_from_its_snapshot_decrypts_the_round_it_opened_exactly_once():
    """A SuperNode runs each stage in a fresh process: the key holder's secret key and open rounds survive in its
    snapshot, and a nonce spent before the snapshot stays spent after it."""
    from attacks.protocol.jobs import HEJob
    from protocols import ProtocolAbort
    from protocols.he.roles import HEKeyHolder

    job = HEJob()
    setup = job.setup()
    inputs = {c: job.client(c).encrypt(setup) for c in job.vectors}
    holder = HEKeyHolder.restore(job.holder.snapshot(), job.members[0])
    assert (holder.public_context, holder.fingerprint) == (job.holder.public_context, job.holder.fingerprint)
    holder.begin(setup)
    for c in sorted(inputs):
        holder.add(inputs[c])
    words, included = job.server.receive_decrypted(holder.finish())
    np.testing.assert_array_equal(words, job.expected())
    assert included == set(job.vectors)
    with pytest.raises(ProtocolAbort, match="nonce was not drawn"):  # its one decryption is spent
        HEKeyHolder.restore(holder.snapshot(), job.members[0]).begin(setup)
    with pytest.raises(ProtocolAbort, match="not the job's key holder"):
        HEKeyHolder.restore(job.holder.snapshot(), job.members[1])
    with pytest.raises(MalformedMessageError):
        HEKeyHolder.restore(job.holder.snapshot()[:-3], job.members[0])


def test_personalization_messages_round_trip_and_refuse_what_is_not_an_evaluation():
    from secure_afl.deploy.messages import ModelBroadcast, PersonalEvaluation

    weights = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    back = ModelBroadcast.from_bytes(ModelBroadcast({"kind": "linear"}, {"weights": weights}).to_bytes())
    assert back.meta == {"kind": "linear"} and np.array_equal(back.arrays["weights"], weights)
    for evaluation in (PersonalEvaluation(2, False, 40, 0.875), PersonalEvaluation(1, True, 0, float("nan"))):
        again = PersonalEvaluation.from_bytes(evaluation.to_bytes())
        assert (again.client, again.withheld, again.held_out) == (evaluation.client, evaluation.withheld,
                                                                  evaluation.held_out)
        assert again.accuracy == evaluation.accuracy or np.isnan(again.accuracy) and np.isnan(evaluation.accuracy)
    for wrong in (PersonalEvaluation(0, False, 5, 1.5), PersonalEvaluation(0, False, 0, 0.5),
                  PersonalEvaluation(0, False, 5, float("nan"))):
        with pytest.raises(MalformedMessageError, match="not an evaluation"):
            PersonalEvaluation.from_bytes(wrong.to_bytes())
    with pytest.raises(MalformedMessageError, match="kind"):
        PersonalEvaluation.from_bytes(ModelBroadcast({}, {}).to_bytes())


def test_an_apfl_site_evaluates_its_own_personal_model_once_after_its_round_and_sends_only_two_numbers(tmp_path):
    """The site's rows file carries its held-out rows; it maps both through the public and the local (refinement)
    map, answers the round, then evaluates exactly the in-process client's personalized model on its held-out rows.
    A second request, one before the round, or a model of another shape is refused; under DP both numbers are
    withheld."""
    pytest.importorskip("flwr")
    import torch
    from flwr.app import Context, RecordDict

    from protocols import ProtocolAbort
    from secure_afl.algorithms.apfl import APFLClient, configure
    from secure_afl.deploy.client_app import _personal_evaluation, _vector
    from secure_afl.deploy.messages import ModelBroadcast
    from secure_afl.deploy.site import FeatureSource, Task, write_site_rows
    from secure_afl.runner import build_feature_map, build_local_map

    rng = np.random.default_rng(3)
    raw, held = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(9, 8)).astype(np.float32)
    y, held_y = rng.integers(0, 10, size=30), rng.integers(0, 10, size=9)
    weights = rng.normal(size=(8, 10))
    broadcast = ModelBroadcast({}, {"weights": weights})

    def site_for(name: str, **options) -> tuple[Site, Context]:
        config = RunConfig(clients=3, protocol="plaintext", dataset="digits", algorithm="apfl", refine_width=16,
                           **options)
        source = FeatureSource(config.backbone, "random:0", config.resolution)
        write_job(tmp_path / f"{name}.json", config, Task(10, 100, source))
        rows = write_site_rows(tmp_path / f"{name}.npz", source, raw, y, held, held_y)
        site = Site.from_node_config({"job": str(tmp_path / f"{name}.json"), "partition-id": 1, "num-partitions": 3,
                                      "dataset-path": str(rows)})
        return site, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    site, ctx = site_for("job")
    with pytest.raises(ProtocolAbort, match="after all its rounds"):
        _personal_evaluation(site, ctx, broadcast)  # before the round: refused, and the one chance is spent
    site, ctx = site_for("again")
    server, _ = site.algorithm(site.features())
    _vector(site, ctx, RoundCall.of(server.next_round()).to_bytes())
    with pytest.raises(ProtocolAbort, match="not a finite 8 × 10 model"):
        _personal_evaluation(site, ctx, ModelBroadcast({}, {"weights": weights[:5]}))
    site, ctx = site_for("ok")
    _vector(site, ctx, RoundCall.of(server.next_round()).to_bytes())
    evaluation = _personal_evaluation(site, ctx, broadcast)
    config = site.job()
    mapped = [build_feature_map(config).apply(torch.from_numpy(r))[0] for r in (raw, held)]
    local = [build_local_map(config).apply(torch.from_numpy(r))[0] for r in (raw, held)]
    personal = APFLClient(mapped[0], local[0], y, 10).personalize(weights, configure(config))
    assert not evaluation.withheld and evaluation.held_out == 9
    assert evaluation.accuracy == personal.accuracy(mapped[1].numpy(), local[1].numpy(), held_y)
    with pytest.raises(ProtocolAbort, match="answers once"):
        _personal_evaluation(site, ctx, broadcast)
    site, ctx = site_for("dp", dp_epsilon=2.0)
    server, _ = site.algorithm(site.features())
    _vector(site, ctx, RoundCall.of(server.next_round()).to_bytes())
    withheld = _personal_evaluation(site, ctx, broadcast)
    assert withheld.withheld and withheld.held_out == 0 and np.isnan(withheld.accuracy)


def test_site_rows_round_trip_and_anything_else_is_refused(tmp_path):
    """A rows file holds its rows and the source that made them; a site refuses rows of another source (rows of the
    same width from other weights would give a silently wrong model), of another format, or not finite."""
    from secure_afl.deploy.site import (SITE_ROWS_FORMAT, FeatureSource, Task, read_held_out_rows, read_site_rows,
                                        read_task, write_site_rows)

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 2, 2, 1])
    source = FeatureSource("efficientnet_lite0", "sha256:" + "ab" * 32, 32)
    features, labels = read_site_rows(write_site_rows(tmp_path / "rows.npz", source, x, y), 3, source)
    assert np.array_equal(features, x) and features.dtype == np.float32 and np.array_equal(labels, y)
    with pytest.raises(ConfigError, match="one label in 0..1"):
        read_site_rows(tmp_path / "rows.npz", 2, source)
    other = FeatureSource("efficientnet_lite0", "sha256:" + "cd" * 32, 64)
    with pytest.raises(ConfigError, match=f"weights 'sha256:{'ab' * 32}' where the job has 'sha256:{'cd' * 32}'; "
                                          "resolution 32 where the job has 64; make them again"):
        read_site_rows(tmp_path / "rows.npz", 3, other)
    write_site_rows(tmp_path / "nan.npz", source, np.full((2, 3), np.nan), np.zeros(2))
    with pytest.raises(ConfigError, match="finite"):
        read_site_rows(tmp_path / "nan.npz", 3, source)
    np.savez(tmp_path / "plain.npz", features=x, labels=y)
    with pytest.raises(ConfigError, match="not a site rows file"):
        read_site_rows(tmp_path / "plain.npz", 3, source)
    unsourced = np.frombuffer(json.dumps({"format": SITE_ROWS_FORMAT, "version": 1}).encode(), np.uint8)
    np.savez(tmp_path / "v1.npz", format=unsourced, features=x, labels=y)  # written before rows carried their source
    with pytest.raises(ConfigError, match="version 2: make it again"):
        read_site_rows(tmp_path / "v1.npz", 3, source)
    held, held_labels = read_held_out_rows(tmp_path / "rows.npz", 3, dim=3)  # none written: none read
    assert held.shape == (0, 3) and held_labels.shape == (0,)
    path = write_site_rows(tmp_path / "held.npz", source, x, y, x[:2] + 1, y[:2])
    held, held_labels = read_held_out_rows(path, 3, dim=3)
    assert np.array_equal(held, x[:2] + 1) and np.array_equal(held_labels, y[:2])
    with pytest.raises(ConfigError, match=r"held-out features \(rows, 4\)"):
        read_held_out_rows(path, 3, dim=4)
    config = RunConfig(clients=3, dataset="digits")
    assert read_task(write_job(tmp_path / "job.json", config, Task(10, 1437, source))) == Task(10, 1437, source)
    assert read_job(tmp_path / "job.json") == config
    with pytest.raises(ConfigError, match="states no task"):
        read_task(write_job(tmp_path / "bare.json", config))


def test_node_authentication_without_tls_is_refused_before_anything_starts(tmp_path, capsys):
    pytest.importorskip("flwr")
    from secure_afl.cli import main
    from secure_afl.deploy.local import LocalDeployment

    with pytest.raises(ConfigError, match="--auth .* needs --tls"):
        LocalDeployment(3, auth=True).check()
    LocalDeployment(3, tls=True, auth=True).check()
    out = tmp_path / "results.json"
    assert main(["deploy", "local", "--nodes", "3", "--auth", "--dataset", "digits", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("secure-afl: error: --auth (SuperNode authentication) needs --tls")
    assert not out.exists()


def test_a_throw_away_ca_signs_the_superlink_certificate_for_loopback(tmp_path):
    pytest.importorskip("flwr")
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    from secure_afl.deploy.credentials import make_certificates, make_node_key

    certificates = make_certificates(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(certificates.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certificates.server.read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert certificates.server_key.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "server.key", "server.pem"]  # no CA key
    private, public = make_node_key(tmp_path / "keys", "node0")
    assert private.stat().st_mode & 0o777 == 0o600 and public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert isinstance(load_ssh_private_key(private.read_bytes(), None), ec.EllipticCurvePrivateKey)


def test_a_site_process_loads_torch_only_for_a_stage_that_computes_its_vector():
    """A SuperNode starts a process for every message: the ClientApp's module and a site's cheap facts must not
    import torch (about 2 CPU s a message), which only the hello and the stages that compute a vector need."""
    code = ("import sys, secure_afl.deploy.client_app, secure_afl.deploy.site; "
            "print('torch' in sys.modules, 'secure_afl.algorithms.registry' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout
    assert out.split() == ["False", "False"]


def test_the_printed_stage_table_has_one_line_per_stage_name_with_counts_totals_and_maxima():
    """`deploy local` prints a line per stage name, however many rounds ran (the results keep every round's)."""
    pytest.importorskip("flwr")
    from secure_afl.deploy.local import stage_table

    def stage(name, seconds, up, down):
        return {"stage": name, "seconds": seconds, "upload_bytes": {"max": up, "mean": up},
                "download_bytes": {"max": down, "mean": down}}

    rounds = [stage(name, seconds + r, up * (r + 1), 40) for r in range(41)
              for name, seconds, up in (("advertise", 2.0, 160), ("share", 1.0, 1600), ("input", 1.5, 6_000_000))]
    hello = stage("hello", 20.5, 18, 0)
    del hello["stage"]  # the server reports the hello apart from the rounds' stages
    lines = stage_table({"hello": hello, "stages": rounds})
    assert len(lines) == 1 + 4
    assert [line.split()[0] for line in lines[1:]] == ["hello", "advertise", "share", "input"]
    assert lines[1].split() == ["hello", "1", "20.50", "20.50", "18", "0"]
    total = sum(2.0 + r for r in range(41))
    assert lines[2].split() == ["advertise", "41", f"{total:.2f}", "42.00", f"{160 * 41:,}", "40"]
    assert lines[4].split()[-2] == f"{6_000_000 * 41:,}"


def test_the_cpu_of_a_process_its_parent_never_waits_for_is_counted(tmp_path):
    """A SuperExec never waits for the ClientApp processes it starts, and no SuperNode waits for its SuperExec, so
    their CPU never reaches this process's RUSAGE_CHILDREN; the deployment samples every process of its tree."""
    pytest.importorskip("flwr")
    import resource

    from secure_afl.deploy.local import Processes, Usage

    (tmp_path / "spin.py").write_text("import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass")
    (tmp_path / "parent.py").write_text(f"import subprocess, sys, time\n"
                                        f"subprocess.Popen([sys.executable, {str(tmp_path / 'spin.py')!r}])\ntime.sleep(3)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = Processes(dict(os.environ), tmp_path)
    usage = Usage(processes)
    processes.start("parent", [sys.executable, str(tmp_path / "parent.py")]).wait(timeout=60)
    usage.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert waited < 0.5 <= 0.9 <= usage.cpu_s
    split = usage.by_program()  # by the script each interpreter runs, as Flower's tools are
    assert list(split) == ["spin.py", "parent.py"] and [p["processes"] for p in split.values()] == [1, 1]
    assert split["spin.py"]["cpu_s"] >= 0.9 and split["spin.py"]["cpu_s"] + split["parent.py"]["cpu_s"] == usage.cpu_s
