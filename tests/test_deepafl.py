"""DeepAFL: every W_t and Ω_t equals centralized DeepAFL, the sandwiched solve is right, depth never
raises the training risk without regularisation, and the declared bounds hold."""

import json
from dataclasses import replace

import numpy as np
import pytest

from protocols import make_protocol
from secure_afl.algorithms.afl import AFLConfig, ridge_solve
from secure_afl.algorithms.deepafl import DeepAFLClient, DeepAFLConfig, DeepAFLServer, centralized, sandwiched_solve
from secure_afl.cli import main
from secure_afl.data.partition import partition
from secure_afl.errors import ConfigError
from secure_afl.runner import Timer, federate
from secure_afl.statistics import compute_statistics

CONFIG = DeepAFLConfig(width=32, residual_width=20, layers=3, lam=0.5, gamma=0.05)


def normalised(synthetic):
    x, labels, classes = synthetic
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels, classes


def federated(x, labels, classes, parts, config=CONFIG, protocol="plaintext", order=None):
    server = DeepAFLServer(x.shape[1], classes, config, len(labels), 1.0)
    ids = range(len(parts)) if order is None else order
    clients = {k: DeepAFLClient(x[parts[k]], labels[parts[k]], classes, config, 1.0) for k in ids}
    report = federate(server, clients, make_protocol(protocol), Timer())
    assert sum(client.clipped for client in clients.values()) == 0  # the declared bounds held
    return server.model(), report


@pytest.mark.parametrize("protocol", ["plaintext", "mask"])
@pytest.mark.parametrize("alpha, clients", [(0.05, 12), (1.0, 4), (100.0, 30)])
def test_every_layer_equals_centralized_deepafl(synthetic, protocol, alpha, clients):
    x, labels, classes = normalised(synthetic)
    reference = centralized(x, labels, classes, CONFIG, 1.0)
    model, report = federated(x, labels, classes, partition(labels, clients, alpha=alpha, seed=2), protocol=protocol)
    assert len(model.classifiers) == 4 and len(model.residuals) == 3
    assert len(report["per_round"]) == 2 * CONFIG.layers + 1
    assert model.relative_difference(reference) <= 1e-8


@pytest.mark.parametrize("protocol", ["plaintext", "mask"])
def test_raw_features_as_layer_zero_give_afl_ridge_first_and_stay_federated_exact(synthetic, protocol):
    """width 0: Φ_0 = s X with s = √d_b / R, so layer 0 is AFL's ridge with γ = λ / s²."""
    x, labels, classes = normalised(synthetic)
    config = DeepAFLConfig(width=0, residual_width=20, layers=2, lam=0.5 * x.shape[1], gamma=1.0)
    reference = centralized(x, labels, classes, config, 1.0)
    model, _ = federated(x, labels, classes, partition(labels, 6, alpha=0.3, seed=4), config, protocol)
    assert model.relative_difference(reference) <= 1e-8
    assert model.classifiers[0].shape == (x.shape[1], classes)
    afl = ridge_solve(compute_statistics(x, labels, classes), AFLConfig(gamma=0.5))
    np.testing.assert_allclose(next(model.layer_scores(x)), x @ afl, rtol=1e-9, atol=1e-12)


def test_client_order_changes_nothing(synthetic):
    x, labels, classes = normalised(synthetic)
    parts = partition(labels, 9, alpha=0.1, seed=5)
    forward, _ = federated(x, labels, classes, parts)
    backward, _ = federated(x, labels, classes, parts, order=list(reversed(range(9))))
    assert forward.relative_difference(backward) <= 1e-12


@pytest.mark.parametrize("gamma", [0.05, 1.0])
def test_sandwiched_solve_equals_a_brute_force_kronecker_solve(gamma):
    rng = np.random.default_rng(1)
    f, r, w = rng.standard_normal((40, 6)), rng.standard_normal((40, 3)), rng.standard_normal((5, 3))
    gram, cross = f.T @ f, f.T @ r
    omega = sandwiched_solve(gram, cross, w, gamma).matrix
    # vec(S Ω WWᵀ) = (WWᵀ ⊗ S) vec(Ω) with column-major vec
    system = np.kron(w @ w.T, gram) + gamma * np.eye(6 * 5)
    expected = np.linalg.solve(system, (cross @ w.T).ravel(order="F")).reshape((6, 5), order="F")
    np.testing.assert_allclose(omega, expected, rtol=1e-9, atol=1e-12)
    objective = lambda o: np.sum((r - f @ o @ w) ** 2) + gamma * np.sum(o**2)  # noqa: E731
    assert objective(omega) <= objective(omega + 1e-4 * rng.standard_normal(omega.shape))


def test_training_risk_does_not_increase_with_depth_without_regularisation(synthetic):
    x, labels, classes = normalised(synthetic)
    config = DeepAFLConfig(width=16, residual_width=12, layers=6, lam=0.0, gamma=0.0)
    model = centralized(x, labels, classes, config, 1.0)
    targets = np.eye(classes)[labels]
    risks = [float(np.sum((targets - scores) ** 2)) for scores in model.layer_scores(x)]
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(risks, risks[1:]))
    assert risks[-1] < risks[0]


def test_bad_settings_and_out_of_order_rounds_are_refused(synthetic):
    with pytest.raises(ConfigError, match="activation"):
        DeepAFLConfig(activation="swish")
    with pytest.raises(ConfigError, match="layers"):
        DeepAFLConfig(layers=-1)
    x, labels, classes = normalised(synthetic)
    server = DeepAFLServer(x.shape[1], classes, CONFIG, len(labels), 1.0)
    client = DeepAFLClient(x, labels, classes, CONFIG, 1.0)
    first = server.next_round()
    server.receive(first, client.contribute(first))
    residual = server.next_round()
    with pytest.raises(ConfigError, match="cannot answer"):
        client.contribute(type(residual)("deepafl/other/0", residual.length, residual.bound))


def test_deepafl_run_reports_every_layer(tmp_path, capsys):
    out = tmp_path / "deep.json"
    args = ["run", "--dataset", "digits", "--resolution", "32", "--clients", "6", "--quiet", "--algorithm", "deepafl",
            "--depth", "2", "--deep-width", "64", "--residual-width", "48", "--out", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())
    metrics = results["metrics"]
    assert metrics["max_rel_diff_to_centralized"] <= 1e-8
    assert len(metrics["layer_accuracy"]) == 3 and metrics["layer_accuracy"][-1] == metrics["accuracy"]
    assert [r["round"] for r in results["bytes"]["per_round"]] == [
        "deepafl/classifier/0", "deepafl/residual/0", "deepafl/classifier/1", "deepafl/residual/1", "deepafl/classifier/2"]
    capsys.readouterr()
    assert main(["run", "--dataset", "digits", "--quiet", "--depth", "3", "--out", str(tmp_path / "x.json")]) == 2
    assert "depth only apply to --algorithm deepafl" in capsys.readouterr().err


def test_a_false_aggregate_derived_bound_is_clipped_to_never_refused(synthetic):
    """Issue 12, finding 4: later rounds' bounds come from sums the server received; a client cannot check
    them, so it clips instead of refusing (a refusal would be one bit about its data). The first round's
    bound is public: there the vector is left to the protocol, which refuses out-of-bound values."""
    x, labels, classes = normalised(synthetic)
    server = DeepAFLServer(x.shape[1], classes, CONFIG, len(labels), 1.0)
    client = DeepAFLClient(x, labels, classes, CONFIG, 1.0)
    first = server.next_round()
    statistics = client.contribute(first)
    server.receive(first, statistics)
    lying = replace(server.next_round(), bound=1e-3)
    vector = client.contribute(lying)
    assert np.abs(vector).max() <= 1e-3 and client.clipped > 0
    tiny_first = replace(first, bound=1e-3)
    fresh = DeepAFLClient(x, labels, classes, CONFIG, 1.0)
    assert np.abs(fresh.contribute(tiny_first)).max() > 1e-3 and fresh.clipped == 0
