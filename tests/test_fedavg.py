"""FedAvg / FedProx: the weighted average is a protocol sum, sampling and the public box hold,
FedProx's proximal step works, DP-SGD reaches and reports its ε."""

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from protocols import make_protocol
from secure_afl.algorithms.fedavg import (DPConfig, FedAvgClient, FedAvgConfig, FedAvgServer, build_head,
                                          parameter_vector, report)
from secure_afl.cli import main
from secure_afl.data.partition import partition
from secure_afl.errors import ConfigError, TrainingWarning
from secure_afl.runner import Timer, federate


def run(synthetic, config, protocol="plaintext", clients=6):
    x, labels, classes = synthetic
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    parts = partition(labels, clients, alpha=0.5, seed=3)
    server = FedAvgServer(x.shape[1], classes, config, list(range(clients)), len(labels))
    members = {k: FedAvgClient(k, x[p], labels[p], classes, config, config.rounds) for k, p in enumerate(parts)}
    rounds = []
    federate(server, members, make_protocol(protocol), Timer(), lambda spec, srv: rounds.append(spec.participants))
    return server, members, rounds, (x, labels)


def test_secure_aggregation_gives_the_same_training(synthetic):
    config = FedAvgConfig(rounds=4, lr=2.0)
    plain, *_ = run(synthetic, config)
    masked, *_ = run(synthetic, config, protocol="mask")
    assert np.max(np.abs(plain.theta - masked.theta)) / np.max(np.abs(plain.theta)) <= 1e-6
    assert not np.allclose(plain.theta, parameter_vector(build_head(config, 24, 6)))  # it did train


def test_the_server_takes_the_sample_weighted_average(synthetic):
    config = FedAvgConfig(rounds=1, lr=1.0)
    x, labels, classes = synthetic
    server = FedAvgServer(24, classes, config, [0, 1], len(labels))
    spec = server.next_round()
    a, b = np.full(spec.length - 1, 2.0), np.full(spec.length - 1, -1.0)
    server.receive(spec, np.concatenate([10 * a + 30 * b, [40.0]]))
    np.testing.assert_allclose(server.theta, (10 * a + 30 * b) / 40)


def test_client_sampling_asks_the_planned_fraction(synthetic):
    _, _, rounds, _ = run(synthetic, FedAvgConfig(rounds=5, client_fraction=0.5), clients=6)
    assert [len(r) for r in rounds] == [3] * 5 and len(set(map(frozenset, rounds))) > 1


def test_fedprox_with_full_pull_keeps_the_global_model(synthetic):
    config = FedAvgConfig(rounds=3, lr=0.5, mu=2.0)  # lr·μ = 1: each proximal step returns to θ_global
    server, *_ = run(synthetic, config)
    np.testing.assert_allclose(server.theta, parameter_vector(build_head(config, 24, 6)), atol=1e-6)


def test_parameters_are_projected_onto_the_public_box(synthetic):
    config = FedAvgConfig(rounds=2, lr=5.0, param_bound=0.01)
    server, members, *_ = run(synthetic, config)
    assert sum(m.clamped for m in members.values()) > 0 and np.abs(server.theta).max() <= 0.01 + 1e-12


def test_dp_sgd_reaches_its_target_epsilon_and_a_deployed_job_states_the_same_calibration(synthetic):
    """Each client calibrates z to its row count and stays within the target ε. The operator of a deployed job holds
    no client: its DP-SGD block gives the same z, σ and noise level from the row counts (the clients' own
    calibration), ε and the clamp counts null (each site keeps its own)."""
    config = FedAvgConfig(rounds=3, lr=1.0, dp=DPConfig(clip=1.0, epsilon=4.0))
    server, members, _, (_, labels) = run(synthetic, config, clients=3)
    epsilons = [m.epsilon() for m in members.values()]
    assert all(3.6 <= e <= 4.0 + 1e-6 for e in epsilons)
    features = SimpleNamespace(data=SimpleNamespace(client_indices=partition(labels, 3, alpha=0.5, seed=3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)  # DP-SGD noise dominates at this batch size
        ours, deployed = report(config, server, members, features), report(config, server, None, features)
    assert len({m.noise_multiplier for m in members.values()}) == 3  # three row counts, three calibrations
    assert deployed["dp"]["noise_multiplier"] == max(m.noise_multiplier for m in members.values())
    assert {k: v for k, v in deployed["dp"].items() if k not in ("epsilon", "guarantee")} == \
        {k: v for k, v in ours["dp"].items() if k not in ("epsilon", "guarantee")}
    assert deployed["dp"]["epsilon"] is None and ours["dp"]["epsilon"] == max(epsilons)
    assert deployed["parameters_clamped"] is None and ours["parameters_clamped"] == 0 < ours["parameter_values_sent"]
    fixed = FedAvgConfig(rounds=2, lr=1.0, dp=DPConfig(clip=1.0, noise_multiplier=1.0))
    _, short, *_ = run(synthetic, fixed, clients=3)
    longer = FedAvgConfig(rounds=4, lr=1.0, dp=DPConfig(clip=1.0, noise_multiplier=1.0))
    _, long, *_ = run(synthetic, longer, clients=3)
    assert long[0].epsilon() > short[0].epsilon() > 0


def test_a_client_without_rows_under_dp_sgd_has_no_mechanism_and_sends_zeros(synthetic):
    """Every other client in a deployed site's process (and a client the minimum-count rule emptied): nothing to
    protect, nothing to calibrate (a sample rate over no rows)."""
    x, labels, classes = synthetic
    config = FedAvgConfig(rounds=2, lr=1.0, dp=DPConfig(clip=1.0, epsilon=4.0))
    empty = FedAvgClient(0, x[:0], labels[:0], classes, config, config.rounds)
    assert empty.noise_multiplier is None and empty.epsilon() is None
    vector = empty.contribute(FedAvgServer(x.shape[1], classes, config, [0], len(labels)).next_round())
    assert vector.shape == (x.shape[1] * classes + classes + 1,) and not np.any(vector)


@pytest.mark.parametrize("kwargs, message", [
    (dict(client_fraction=0.0), "client_fraction"), (dict(head="cnn"), "head"), (dict(mu=-1.0), "mu"),
    (dict(dp=None, rounds=0), "rounds"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FedAvgConfig(**kwargs)
    with pytest.raises(ConfigError, match="exactly one"):
        DPConfig(noise_multiplier=1.0, epsilon=2.0)


@pytest.mark.parametrize("algorithm, head, lr", [("fedavg", "linear", "4"), ("fedprox", "mlp", "1")])
def test_gradient_baseline_run_records_its_history(tmp_path, capsys, algorithm, head, lr):
    out = tmp_path / "run.json"
    args = ["run", "--dataset", "digits", "--resolution", "32", "--clients", "5", "--quiet", "--algorithm", algorithm,
            "--rounds", "4", "--lr", lr, "--head", head, "--hidden", "32", "--out", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())
    metrics = results["metrics"]
    assert [h["round"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["history"][-1]["accuracy"] == metrics["accuracy"] and metrics["accuracy"] > 0.3
    assert metrics["centralized_accuracy"] is None and metrics["max_rel_diff_to_centralized"] is None
    assert len(results["bytes"]["per_round"]) == 4
    capsys.readouterr()
    assert main(["run", "--dataset", "digits", "--quiet", "--rounds", "3", "--out", str(tmp_path / "x.json")]) == 2
    assert "rounds only apply to --algorithm fedavg / fedprox" in capsys.readouterr().err
