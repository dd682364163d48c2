"""The deployment over Flower, as real processes on loopback: a SuperLink and one SuperNode per client.

Each test starts its own federation with ``run_local`` (free ports, its own FLWR_HOME, its own work
directory) and checks the deployed server's results against the in-process run of the same job. Slow by
nature (a SuperNode starts a process for every Flower message), so marked slow; they skip only where
Flower is not installed (`make test` installs it with the test extra).
"""

import json
import math

import numpy as np
import pytest

pytest.importorskip("flwr")

from protocols import ContributionLedger, FixedPoint, Roster, Transcript  # noqa: E402
from protocols.he.session import PublicSession  # noqa: E402
from protocols.transcript import size_on_disk  # noqa: E402
from secure_afl.algorithms.afl import AFLConfig, reference  # noqa: E402
from secure_afl.algorithms.fedavg import dp_noise_multiplier  # noqa: E402
from secure_afl.config import RunConfig  # noqa: E402
from secure_afl.deploy.credentials import make_node_key  # noqa: E402
from secure_afl.deploy.messages import PersonalEvaluation  # noqa: E402
from secure_afl.deploy.local import (DeploymentError, LocalDeployment, Processes, _alive, _tool, flower_env,  # noqa: E402
                                     free_port, marked, run_local, start_superlink)
from secure_afl.model import Model  # noqa: E402
from secure_afl.privacy import clip_rows  # noqa: E402
from secure_afl.results import format_summary  # noqa: E402
from secure_afl.runner import Timer, build_algorithm, load_features, plan_run, train  # noqa: E402
from secure_afl.statistics import StatisticsLayout, packed_statistics  # noqa: E402

pytestmark = pytest.mark.slow
JOB = {"dataset": "digits", "resolution": 32, "partition": "iid", "protocol": "mask"}
STAGE_TIMEOUT = 240.0  # a loaded 2-core machine answers a stage well within this; a node that dies is counted out
# as soon as the SuperLink reports it gone (seconds, or 2 heartbeats), so no test waits this out


def deploy(tmp_path, nodes: int, crash=None, transcript=None, tls=False, auth=False, **options):
    deployment = LocalDeployment(nodes, STAGE_TIMEOUT, connect_timeout=300.0, crash=crash or {}, tls=tls, auth=auth,
                                 workdir=str(tmp_path / "work"))
    return run_local(RunConfig(clients=nodes, **(JOB | options)), deployment, transcript)


def in_process(clients: int, **options):
    """The same job in one process: its training, and each client's true statistics vector with the round's spec."""
    plan = plan_run(RunConfig(clients=clients, **(JOB | options)))
    features = load_features(plan, Timer())
    server, algorithm_clients = build_algorithm(plan, features)
    spec = server.next_round()
    vectors = {k: client.contribute(spec) for k, client in algorithm_clients.items()}
    return train(plan, features, Timer()), vectors, spec, features


def left_running(tmp_path) -> list[int]:
    """Live processes of the deployment under ``tmp_path`` (each carries its FLWR_HOME in its environment)."""
    return marked(f"FLWR_HOME={tmp_path / 'work' / 'flwr'}".encode())


def telling(vector: np.ndarray) -> slice:
    """512 values of a client's vector worth looking for in the server's view: the packed Gram starts with zeros
    (feature dimensions no image lights up), which any message may hold, so the window starts at its first nonzero."""
    start = int(np.flatnonzero(vector)[0])
    assert np.count_nonzero(vector[start:start + 512]) >= 32  # 32 exact float64 values: no message holds them by chance
    return slice(start, start + 512)


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_masked_afl_over_tls_with_node_authentication_equals_the_in_process_run_and_hides_every_input(tmp_path):
    """A CA made for the run, HTTPS everywhere, only registered SuperNodes: the masked job equals the in-process run
    and the server's transcript holds no client's statistics."""
    results = deploy(tmp_path, 3, transcript=str(tmp_path / "transcript"), tls=True, auth=True)
    training, vectors, spec, _ = in_process(3)
    weights = np.load(tmp_path / "work" / "out" / "model.npz", allow_pickle=False)["weights"]
    assert relative(weights, training.server.model().weights) <= 1e-9
    assert results["metrics"]["accuracy"] == training.metrics["accuracy"]
    assert results["bytes"]["included_clients"] == [0, 1, 2]
    deployment = results["deployment"]
    assert deployment["transport"] == "https (loopback)" and deployment["node_authentication"] is True
    assert [s["stage"] for s in deployment["stages"]] == ["advertise", "share", "input", "consistency", "unmask"]
    assert all(s["answered"] == [0, 1, 2] and s["upload_bytes"]["max"] > 0 for s in deployment["stages"])
    assert deployment["processes_left_running"] == [] and left_running(tmp_path) == []

    # the deployed server's transcript holds masked words only: no client's true statistics, only their sum
    (round_,) = Transcript.load(tmp_path / "transcript").rounds
    view = round_.view()
    assert view.secure and view.protocol == "mask" and view.included == (0, 1, 2)
    encoding = FixedPoint.for_round(3, spec.bound, view.report["fraction_bits"])
    masked, exact = view.inputs(), np.zeros(spec.length, dtype=np.uint64)
    for k, vector in vectors.items():
        encoded = encoding.encode(vector)
        exact += encoded
        assert all(np.count_nonzero(words == encoded) < 0.001 * len(words) for words in masked.values())
        window = telling(vector)
        assert all(vector[window].tobytes() not in data and encoded[window].tobytes() not in data
                   for stage in round_.messages.values() for data in stage.values())
    assert np.array_equal(view.total, encoding.decode(exact))  # the sum of the encodings, bit for bit


def test_masked_deepafl_over_three_supernodes_runs_its_2t_plus_1_rounds_as_the_in_process_run(tmp_path):
    """Each site rebuilds its client for every round from its rows and the calls it answered (client_app._vector):
    every W_t and Ω_t equals the in-process run's, and the server's transcript holds all 2T + 1 masked rounds."""
    options = {"algorithm": "deepafl", "depth": 1, "deep_width": 48, "residual_width": 32}
    results = deploy(tmp_path, 3, transcript=str(tmp_path / "transcript"), **options)
    training, _, _, _ = in_process(3, **options)
    deployed = Model.load(tmp_path / "work" / "out" / "model.npz").predictor
    assert len(deployed.classifiers) == 2 and len(deployed.residuals) == 1
    assert deployed.relative_difference(training.server.model()) <= 1e-9
    for name in ("accuracy", "layer_accuracy", "centralized_accuracy"):
        assert results["metrics"][name] == training.metrics[name]
    assert results["metrics"]["max_rel_diff_to_centralized"] <= 1e-9
    names = ["deepafl/classifier/0", "deepafl/residual/0", "deepafl/classifier/1"]
    assert [r["round"] for r in results["bytes"]["per_round"]] == names
    assert results["bytes"]["included_clients"] == [0, 1, 2]
    stages = [s["stage"] for s in results["deployment"]["stages"]]
    assert stages == ["advertise", "share", "input", "consistency", "unmask"] * 3
    assert all(s["answered"] == [0, 1, 2] for s in results["deployment"]["stages"])
    assert results["deployment"]["processes_left_running"] == [] and left_running(tmp_path) == []
    rounds = Transcript.load(tmp_path / "transcript").rounds
    assert [r.name for r in rounds] == names
    assert all(r.view().secure and r.view().included == (0, 1, 2) for r in rounds)
    assert results["transcript"]["bytes"] == size_on_disk(tmp_path / "transcript")
    assert f"({len(names)} rounds, " in format_summary(results)  # what `secure-afl deploy local` prints


def test_fedprox_with_sampled_clients_over_three_supernodes_trains_and_records_the_in_process_history(tmp_path):
    """R rounds of two sampled clients each: a site's first round may come after others it was not asked to; the
    per-round models the server saves give the in-process history's accuracies."""
    options = {"algorithm": "fedprox", "rounds": 3, "client_fraction": 0.6, "local_epochs": 1, "protocol": "plaintext"}
    results = deploy(tmp_path, 3, **options)
    training, _, _, _ = in_process(3, **options)
    deployed = Model.load(tmp_path / "work" / "out" / "model.npz").predictor
    assert relative(deployed.weights, training.server.model().weights) <= 1e-9
    assert results["metrics"]["accuracy"] == training.metrics["accuracy"]
    history, expected = results["metrics"]["history"], training.metrics["history"]
    assert [(r["round"], r["clients"], r["accuracy"]) for r in history] == \
        [(r["round"], r["clients"], r["accuracy"]) for r in expected]
    asked = [s["answered"] for s in results["deployment"]["stages"]]
    assert [len(a) for a in asked] == [2, 2, 2] and set().union(*map(set, asked)) == {0, 1, 2}
    assert results["deployment"]["processes_left_running"] == [] and left_running(tmp_path) == []


def test_dp_sgd_sites_each_send_their_own_noise_and_the_results_state_the_in_process_calibration(tmp_path):
    """FedAvg with DP-SGD over three SuperNodes, plaintext so the transcript holds every site's vector. Round 0 starts
    from the public θ₀, so the noise-free in-process client's round-0 vector is the reference: each site's differs by
    noise of the calibrated size, its weight n_k is exact. The results state the in-process run's public calibration
    (each site's z from its row count); the ε each site's accountant counts and the clamps stay at the site."""
    options = {"protocol": "plaintext", "algorithm": "fedavg", "rounds": 2, "local_epochs": 1}
    results = deploy(tmp_path, 3, transcript=str(tmp_path / "transcript"), dp_epsilon=4.0, **options)
    private, _, _, _ = in_process(3, dp_epsilon=4.0, **options)
    _, clean, _, features = in_process(3, **options)
    rounds = Transcript.load(tmp_path / "transcript").rounds
    assert [r.view().included for r in rounds] == [(0, 1, 2)] * 2 and results["bytes"]["included_clients"] == [0, 1, 2]
    inputs = rounds[0].view().inputs()
    dp, expected = results["metrics"]["dp"], private.metrics["dp"]
    job = private.server.config
    for k in range(3):
        rows = len(features.data.client_indices[k])
        assert inputs[k][-1] == clean[k][-1] == rows
        # Opacus: ⌈rows / batch⌉ steps on Poisson batches of expected size rows // steps, each adding N(0, (z C)²)
        # to the clipped sum, divided by that size (z: the site's own, from its row count); over 12k parameters the
        # sample deviation is within 1 % of the noise's, and the gradients' part of the difference adds less than
        # the 10 % allowed (measured 0 to 1 %)
        steps = math.ceil(rows / job.batch_size)
        sigma = dp_noise_multiplier(job, rows, job.rounds) * job.dp.clip
        assert sigma <= dp["sigma"]  # the block states the largest
        difference = (inputs[k][:-1] - clean[k][:-1]) / rows
        assert difference.size > 10_000
        assert np.std(difference) == pytest.approx(job.lr * sigma / (rows // steps) * math.sqrt(steps), rel=0.1)
    for key in ("target_epsilon", "delta", "noise_multiplier", "sigma", "clip", "noise_to_signal_per_step",
                "accountant"):
        assert dp[key] == expected[key], key
    assert dp["epsilon"] is None and 0 < expected["epsilon"] <= 4.0 + 1e-6
    assert set(results["metrics"]) == set(private.metrics)
    assert results["metrics"]["parameters_clamped"] is None and results["metrics"]["parameter_values_sent"] is None
    assert "ε (counted at the sites), each at most the target 4" in format_summary(results)
    assert results["deployment"]["processes_left_running"] == [] and left_running(tmp_path) == []


def test_a_supernode_killed_before_key_sharing_leaves_an_exact_round_of_the_survivors(tmp_path):
    """4 nodes, t = 3: node 3 advertised its keys, then its machine died; the round completes without it."""
    results = deploy(tmp_path, 4, crash={3: "share"})
    assert results["bytes"]["included_clients"] == [0, 1, 2]
    (round_,) = results["bytes"]["per_round"]
    assert round_["protocol"]["dropped"]["share"] == [3] and round_["protocol"]["threshold"] == 3
    assert results["metrics"]["max_rel_diff_to_centralized"] <= 1e-9  # centralized ridge on clients 0-2's pooled rows
    _, _, _, features = in_process(4)
    data = features.data
    pooled = np.concatenate(data.client_indices[:3])
    central = reference(AFLConfig(), data.train_x[pooled], data.train_y[pooled], data.num_classes, 1.0)
    weights = np.load(tmp_path / "work" / "out" / "model.npz", allow_pickle=False)["weights"]
    assert relative(weights, central.weights) <= 1e-9
    assert results["deployment"]["processes_left_running"] == [] and left_running(tmp_path) == []


def test_too_few_survivors_fail_cleanly_after_masked_inputs_without_revealing_any(tmp_path):
    """3 nodes, t = 3: node 2 dies after sending its masked input; the survivor sets cannot be certified, so
    nothing is unmasked, no transcript is written and the run fails with the protocol's reason."""
    with pytest.raises(DeploymentError, match="signed the survivor sets"):
        deploy(tmp_path, 3, crash={2: "consistency"}, transcript=str(tmp_path / "transcript"))
    work = tmp_path / "work"
    assert left_running(tmp_path) == []  # stopped on failure too
    report = json.loads((work / "out" / "server.json").read_text())
    assert report["status"] == "failed"
    assert [s["stage"] for s in report["stages"]] == ["advertise", "share", "input", "consistency"]
    assert report["stages"][2]["answered"] == [0, 1, 2] and report["stages"][3]["answered"] == [0, 1]
    assert not (work / "out" / "transcript").exists() and not (tmp_path / "transcript").exists()
    assert not (work / "out" / "model.npz").exists()
    for k in (0, 1):  # the survivors' masked inputs left them: each spent its statistic for the job
        assert len(ContributionLedger.in_directory(work / "sites" / str(k) / "ledger", k).entries()) == 1


def test_he_bfv_afl_over_three_supernodes_equals_the_in_process_run_with_the_secret_key_on_a_node(tmp_path):
    results = deploy(tmp_path, 3, transcript=str(tmp_path / "transcript"), protocol="he-bfv")
    training, vectors, spec, _ = in_process(3, protocol="he-bfv")
    weights = np.load(tmp_path / "work" / "out" / "model.npz", allow_pickle=False)["weights"]
    assert relative(weights, training.server.model().weights) <= 1e-9
    assert results["metrics"]["accuracy"] == training.metrics["accuracy"]
    assert results["bytes"]["included_clients"] == [0, 1, 2]
    deployment = results["deployment"]
    assert [s["stage"] for s in deployment["stages"]] == ["open", "encrypt", "decrypt"]
    assert [s["answered"] for s in deployment["stages"]] == [[0], [0, 1, 2], [0]]  # client 0 holds the key
    assert deployment["processes_left_running"] == [] and left_running(tmp_path) == []
    (round_,) = Transcript.load(tmp_path / "transcript").rounds
    view = round_.view()
    assert view.secure and view.protocol == "he-bfv" and view.included == (0, 1, 2)
    assert np.max(np.abs(view.total - sum(vectors.values()))) <= view.report["quantization_bound"]
    (context,) = round_.messages["context"].values()
    # the context the server held is the key holder's signed one, and it parses as public: a context carrying a
    # secret key is refused by the load (protocols/he/schemes.py: load_context)
    PublicSession.load(context, Roster.load(tmp_path / "work" / "roster.json"))
    encoding = FixedPoint.for_round(3, spec.bound, view.report["fraction_bits"])
    for vector in vectors.values():  # no client's statistics in the clear, nor encoded, anywhere in the server's view
        window = telling(vector)
        assert all(vector[window].tobytes() not in data and encoding.encode(vector)[window].tobytes() not in data
                   for stage in round_.messages.values() for data in stage.values())


def test_a_key_holder_that_dies_before_decrypting_fails_the_round_cleanly(tmp_path):
    """3 nodes, he-bfv: every client encrypted, then the key holder's machine died; nobody else can decrypt."""
    with pytest.raises(DeploymentError, match="the key holder 0 dropped out at stage decrypt"):
        deploy(tmp_path, 3, crash={0: "decrypt"}, transcript=str(tmp_path / "transcript"), protocol="he-bfv")
    work = tmp_path / "work"
    assert left_running(tmp_path) == []
    report = json.loads((work / "out" / "server.json").read_text())
    assert report["status"] == "failed"
    assert [(s["stage"], s["answered"]) for s in report["stages"]] == [("open", [0]), ("encrypt", [0, 1, 2]),
                                                                         ("decrypt", [])]
    assert not (work / "out" / "transcript").exists() and not (tmp_path / "transcript").exists()
    assert not (work / "out" / "model.npz").exists()


def test_a_superlink_with_node_authentication_refuses_a_supernode_whose_key_nobody_registered(tmp_path):
    """Flower's code 305 (the job over TLS with registered nodes runs in the masked AFL test)."""
    work = tmp_path / "intruder"
    for sub in ("flwr", "logs"):
        (work / sub).mkdir(parents=True)
    processes = Processes(flower_env(work), work / "logs")
    try:
        federation = start_superlink(processes, work, LocalDeployment(3, tls=True, auth=True))
        _, registered = make_node_key(work / "keys", "registered")
        federation.register(processes, registered)  # the registry works; the intruder's key is simply not in it
        private, _ = make_node_key(work / "keys", "intruder")
        intruder = processes.start("intruder", [_tool("flower-supernode"), *federation.supernode_flags(),
                                                "--auth-supernode-private-key", str(private), "--port", str(free_port()),
                                                "--node-config", "partition-id=0 num-partitions=3"])
        assert intruder.wait(timeout=180) != 0  # Flower's code 305 is logged (a process exit status stops at 255)
        assert "Exit Code: 305" in (work / "logs" / "intruder.log").read_text(errors="replace")
    finally:
        processes.stop()
    assert not any(_alive(pid) for pid in processes.pids())


def true_releases(features, privacy) -> dict[int, np.ndarray]:
    """The evaluator's side: what each site's DP release is before its noise, from the same partition (rows clipped
    to C in float64, labels scaled by C, n and the counts zeroed: secure_afl/privacy.py)."""
    data = features.data
    layout = StatisticsLayout(data.train_x.shape[1], data.num_classes)
    releases = {}
    for k, idx in enumerate(data.client_indices):
        x, _ = clip_rows(data.train_x[idx], privacy.clip)
        releases[k] = privacy.release(packed_statistics(x, data.train_y[idx], data.num_classes), layout)
    return releases


def same_guarantee(deployed: dict, in_process: dict) -> None:
    """The deployed results' ``dp`` block states the in-process run's guarantee; the sites keep their clip counts."""
    for key in ("scope", "epsilon", "target_epsilon", "delta", "noise_multiplier", "sigma", "share_sigma",
                "sensitivity", "clip", "placement", "min_clients", "releases", "accountant", "clip_probability",
                "solve", "rows_clipped"):
        assert deployed[key] == in_process[key], key
    assert deployed["entries_clipped_to_bound"] is None and deployed["rows_reclipped_float64"] is None


def test_each_site_adds_its_own_calibrated_dp_noise_before_its_vector_leaves_and_withholds_its_evaluation(tmp_path):
    """Plaintext, so the transcript holds every site's vector: each one minus the site's true release (the evaluator
    computes it from the same partition) is the calibrated Gaussian noise, drawn independently at each site. APFL's
    sites build their personalized models but withhold their accuracies and counts: no noise covers those. (Noise is
    added before the protocol sees the vector, so masking changes none of this; the masked sum is exact elsewhere.)"""
    options = {"protocol": "plaintext", "algorithm": "apfl", "refine_width": 256, "dp_epsilon": 2.0}
    results = deploy(tmp_path, 3, transcript=str(tmp_path / "transcript"), **options)
    training, _, spec, features = in_process(3, **options)
    privacy = training.server.config.privacy
    metrics = results["metrics"]
    same_guarantee(metrics["dp"], training.metrics["dp"])
    assert set(metrics) == set(training.metrics) and metrics["accuracy"] is not None
    assert metrics["per_client_accuracy"] == [None] * 3 and metrics["personalized_accuracy"] is None
    assert results["deployment"]["personalized"] == {str(k): {"withheld": True, "held_out": 0, "accuracy": None}
                                                     for k in range(3)}
    assert results["deployment"]["stages"][-1]["upload_bytes"]["max"] == PERSONAL_EVALUATION_BYTES
    (round_,) = Transcript.load(tmp_path / "transcript").rounds
    assert round_.spec["layout"] == json.loads(json.dumps(spec.public()["layout"]))  # the same noise and scaling
    assert round_.spec["layout"]["noise_sigma"] == privacy.share_sigma
    sent = features.data.train_x.shape[1] * (features.data.train_x.shape[1] + 1) // 2 \
        + features.data.train_x.shape[1] * features.data.num_classes
    truth, inputs = true_releases(features, privacy), round_.view().inputs()
    noise = {k: inputs[k][:sent] - truth[k][:sent] for k in range(3)}
    assert all(np.all(inputs[k][sent:] == 0) for k in range(3))  # n and the counts are not sent under DP
    everything = np.concatenate(list(noise.values()))
    # N ≥ 3 × 100k entries: the sample standard deviation's relative standard error is 1/√(2N) < 0.0013, so 2 % is
    # over 15 standard errors, while a miscalibration the code could make (σ/√t for σ, t = 3: 42 %; noise missing:
    # 100 %) is far outside; the mean and the cross-site correlations are within 5 standard errors (σ/√N, 1/√N).
    assert everything.size >= 300_000
    assert np.std(everything) == pytest.approx(privacy.share_sigma, rel=0.02)
    assert abs(np.mean(everything)) < 5 * privacy.share_sigma / np.sqrt(everything.size)
    assert all(abs(np.corrcoef(noise[a], noise[b])[0, 1]) < 5 / np.sqrt(sent) for a, b in ((0, 1), (0, 2), (1, 2)))
    assert results["bytes"]["included_clients"] == [0, 1, 2]
    assert "(counted at the sites) entries clipped" in format_summary(results)  # what `deploy local` prints
    assert results["deployment"]["processes_left_running"] == [] and left_running(tmp_path) == []


def test_he_ckks_afl_over_three_supernodes_gives_the_in_process_fixed_point_sum_exactly(tmp_path):
    """Integer CKKS is exact (README: limb sums held to 2^45, a decryption further than 0.25 from an integer
    refused), so its documented tolerance is none: the deployed sum is the in-process run's fixed-point sum, bit for
    bit, through the same three stages as he-bfv."""
    results = deploy(tmp_path, 3, transcript=str(tmp_path / "transcript"), protocol="he-ckks")
    training, vectors, spec, _ = in_process(3, protocol="he-ckks")
    weights = np.load(tmp_path / "work" / "out" / "model.npz", allow_pickle=False)["weights"]
    assert relative(weights, training.server.model().weights) <= 1e-9
    assert results["metrics"]["accuracy"] == training.metrics["accuracy"]
    deployment = results["deployment"]
    assert [(s["stage"], s["answered"]) for s in deployment["stages"]] == [("open", [0]), ("encrypt", [0, 1, 2]),
                                                                             ("decrypt", [0])]
    (round_,) = Transcript.load(tmp_path / "transcript").rounds
    view = round_.view()
    assert view.secure and view.protocol == "he-ckks" and view.report["exact"] and view.included == (0, 1, 2)
    encoding = FixedPoint.for_round(3, spec.bound, view.report["fraction_bits"])
    exact = sum((encoding.encode(v) for v in vectors.values()), np.zeros(spec.length, dtype=np.uint64))
    assert np.array_equal(view.total, encoding.decode(exact))
    assert deployment["processes_left_running"] == [] and left_running(tmp_path) == []


PERSONAL_EVALUATION_BYTES = len(PersonalEvaluation(0, False, 1, 1.0).to_bytes())  # all a site sends after the rounds


def test_masked_apfl_over_three_supernodes_equals_the_in_process_run_and_each_site_keeps_its_personal_model(tmp_path):
    """The primary stream is one masked round; then each site builds its refinement stream on its own local-map
    features, evaluates its personalized model on its own held-out rows and sends back only that accuracy and count:
    the global model and every per-client metric equal the in-process run's."""
    options = {"algorithm": "apfl", "refine_width": 512}
    results = deploy(tmp_path, 3, transcript=str(tmp_path / "transcript"), **options)
    training, _, _, _ = in_process(3, **options)
    weights = np.load(tmp_path / "work" / "out" / "model.npz", allow_pickle=False)["weights"]
    assert relative(weights, training.server.model().weights) <= 1e-9
    deployed, expected = results["metrics"], training.metrics
    assert set(deployed) == set(expected)
    assert expected["personalized_accuracy"] != expected["global_model_personalized_accuracy"]  # personal models count
    for name in ("accuracy", "train_accuracy", "centralized_accuracy", "personalized_accuracy",
                 "global_model_personalized_accuracy", "per_client_accuracy", "clients_included",
                 "rows_changed_by_norm_bound"):
        assert deployed[name] == pytest.approx(expected[name], rel=0, abs=1e-9), name
    assert deployed["max_rel_diff_to_centralized"] <= 1e-9
    deployment = results["deployment"]
    assert [s["stage"] for s in deployment["stages"]] == ["advertise", "share", "input", "consistency", "unmask",
                                                          "personalize"]
    personalize = deployment["stages"][-1]
    assert personalize["answered"] == [0, 1, 2] and personalize["upload_bytes"]["max"] == PERSONAL_EVALUATION_BYTES
    assert deployment["personalized"] == {
        str(k): {"withheld": False, "held_out": results["clients"]["held_out_sizes"][k],
                 "accuracy": deployed["per_client_accuracy"][k]} for k in range(3)}
    transcript = Transcript.load(tmp_path / "transcript")
    (round_,) = transcript.rounds
    assert round_.name == "afl/statistics" and round_.view().secure and round_.view().included == (0, 1, 2)
    _, replies = transcript.disclosure("personalize")  # the server saw the evaluations: its transcript keeps them
    assert {k: PersonalEvaluation.from_bytes(data) for k, data in replies.items()} == {
        k: PersonalEvaluation(k, False, results["clients"]["held_out_sizes"][k], deployed["per_client_accuracy"][k])
        for k in range(3)}
    assert deployment["processes_left_running"] == [] and left_running(tmp_path) == []
