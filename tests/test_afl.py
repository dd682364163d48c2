import numpy as np
import pytest

from protocols import PlaintextProtocol
from secure_afl.algorithms.afl import AFLClient, AFLConfig, AFLServer, ridge_solve, statistics_bound
from secure_afl.algorithms.recursive import RecursiveRidge
from secure_afl.data.partition import partition
from secure_afl.errors import ConfigError, SingularSystemError
from secure_afl.runner import Timer, federate
from secure_afl.statistics import compute_statistics


def pooled_ridge(x, labels, classes, gamma):
    y = np.eye(classes)[labels]
    return np.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ y)


def federated_afl(x, labels, classes, parts, config, order=None):
    server = AFLServer(x.shape[1], classes, config, statistics_bound(len(labels), float(np.linalg.norm(x, axis=1).max())))
    ids = list(range(len(parts))) if order is None else order
    clients = {k: AFLClient(x[parts[k]], labels[parts[k]], classes) for k in ids}
    federate(server, clients, PlaintextProtocol(), Timer())
    return server.model().weights


def rel_diff(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def test_afl_equals_pooled_ridge(synthetic):
    x, labels, classes = synthetic
    parts = partition(labels, 10, alpha=0.1, seed=1)
    weights = federated_afl(x, labels, classes, parts, AFLConfig(gamma=0.5))
    assert rel_diff(weights, pooled_ridge(x, labels, classes, 0.5)) <= 1e-9


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
@pytest.mark.parametrize("clients", [1, 5, 50])
def test_afl_is_invariant_to_partition_and_client_count(synthetic, alpha, clients):
    x, labels, classes = synthetic
    reference = pooled_ridge(x, labels, classes, 1.0)
    parts = partition(labels, clients, alpha=alpha, seed=3)
    assert rel_diff(federated_afl(x, labels, classes, parts, AFLConfig(gamma=1.0)), reference) <= 1e-9


def test_afl_is_invariant_to_client_order(synthetic):
    x, labels, classes = synthetic
    parts = partition(labels, 20, alpha=0.1, seed=4)
    forward = federated_afl(x, labels, classes, parts, AFLConfig(gamma=1.0))
    shuffled = np.random.default_rng(0).permutation(20).tolist()
    assert rel_diff(federated_afl(x, labels, classes, parts, AFLConfig(gamma=1.0), order=shuffled), forward) <= 1e-9


def test_restore_gives_plain_least_squares(synthetic):
    x, labels, classes = synthetic
    stats = compute_statistics(x, labels, classes)
    weights = ridge_solve(stats, AFLConfig(gamma=0.0, restore=True))
    expected, *_ = np.linalg.lstsq(x, np.eye(classes)[labels], rcond=None)
    assert rel_diff(weights, expected) <= 1e-9


def test_restore_on_singular_gram_is_refused(synthetic):
    x, labels, classes = synthetic
    x = np.hstack([x, x[:, :1]])  # a repeated column makes ΣG singular
    stats = compute_statistics(x[:100], labels[:100], classes)
    with pytest.raises(SingularSystemError, match="singular|positive definite"):
        ridge_solve(stats, AFLConfig(gamma=0.0, restore=True))
    assert np.isfinite(ridge_solve(stats, AFLConfig(gamma=1.0))).all()


def test_gamma_zero_without_restore_and_negative_gamma_are_refused():
    with pytest.raises(ConfigError, match="restore"):
        AFLConfig(gamma=0.0)
    with pytest.raises(ConfigError, match="gamma"):
        AFLConfig(gamma=-1.0)


def test_woodbury_recursion_equals_batch_solution(synthetic):
    x, labels, classes = synthetic
    recursive = RecursiveRidge(x.shape[1], classes, gamma=0.5)
    for part in partition(labels, 7, alpha=0.3, seed=5):
        recursive.update(x[part], labels[part])
    assert rel_diff(recursive.weights, pooled_ridge(x, labels, classes, 0.5)) <= 1e-9
    expected_inverse = np.linalg.inv(x.T @ x + 0.5 * np.eye(x.shape[1]))
    assert rel_diff(recursive.inverse, expected_inverse) <= 1e-9


def test_woodbury_handles_batches_larger_than_the_dimension(synthetic):
    x, labels, classes = synthetic
    recursive = RecursiveRidge(x.shape[1], classes, gamma=2.0)
    recursive.update(x, labels)  # 600 rows > 24 dims: processed in chunks
    assert rel_diff(recursive.weights, pooled_ridge(x, labels, classes, 2.0)) <= 1e-9
