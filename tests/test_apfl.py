"""APFL: the primary stream is pooled ridge, each personalized model depends only on the pooled
data and the client's own, and β = 0 is the primary stream."""

import json

import numpy as np
import pytest

from protocols import make_protocol
from secure_afl.algorithms.afl import AFLConfig, AFLServer, statistics_bound
from secure_afl.algorithms.apfl import APFLClient, APFLConfig
from secure_afl.cli import main
from secure_afl.data.partition import partition
from secure_afl.errors import ConfigError
from secure_afl.runner import Timer, federate


def refinement_features(x, width=48, seed=5):
    projection = np.random.default_rng(seed).standard_normal((x.shape[1], width)) / np.sqrt(x.shape[1])
    return np.tanh(x @ projection)


def apfl(x, xr, labels, classes, parts, config=APFLConfig(lam=0.5, beta=0.4), gamma=0.5, protocol="plaintext"):
    bound = statistics_bound(len(labels), float(np.linalg.norm(x, axis=1).max()))
    server = AFLServer(x.shape[1], classes, AFLConfig(gamma=gamma), bound)
    clients = {k: APFLClient(x[p], xr[p], labels[p], classes) for k, p in enumerate(parts)}
    federate(server, clients, make_protocol(protocol), Timer())
    primary = server.model().weights
    return primary, {k: c.personalize(primary, config) for k, c in clients.items()}


def rel_diff(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("protocol", ["plaintext", "mask"])
def test_primary_stream_equals_pooled_ridge(synthetic, protocol):
    x, labels, classes = synthetic
    primary, _ = apfl(x, refinement_features(x), labels, classes, partition(labels, 8, alpha=0.1, seed=2),
                      protocol=protocol)
    pooled = np.linalg.solve(x.T @ x + 0.5 * np.eye(x.shape[1]), x.T @ np.eye(classes)[labels])
    assert rel_diff(primary, pooled) <= 1e-9


def test_a_clients_model_ignores_how_the_others_split_their_data(synthetic):
    x, labels, classes = synthetic
    xr = refinement_features(x)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    mine, others = order[:80], order[80:]
    split_a = [mine] + np.array_split(others, 3)
    skewed = others[np.argsort(labels[others], kind="stable")]  # the others regrouped by label
    split_b = [mine] + np.array_split(skewed, 7)
    _, models_a = apfl(x, xr, labels, classes, split_a)
    _, models_b = apfl(x, xr, labels, classes, split_b)
    assert rel_diff(models_a[0].primary, models_b[0].primary) <= 1e-9
    assert rel_diff(models_a[0].refinement, models_b[0].refinement) <= 1e-9
    reference = np.linalg.solve(xr[mine].T @ xr[mine] + 0.5 * np.eye(xr.shape[1]),
                                xr[mine].T @ (np.eye(classes)[labels[mine]] - x[mine] @ models_a[0].primary))
    assert rel_diff(models_a[0].refinement, reference) <= 1e-9


def test_small_clients_use_the_dual_form_with_the_same_result(synthetic):
    x, labels, classes = synthetic
    xr = refinement_features(x, width=120)  # 120 features: clients below 120 samples take the n_k × n_k form
    parts = partition(labels, 10, alpha=1.0, seed=4)
    assert any(len(p) < 120 for p in parts) and any(len(p) >= 120 for p in parts)
    primary, models = apfl(x, xr, labels, classes, parts)
    for k, p in enumerate(parts):
        primal = np.linalg.solve(xr[p].T @ xr[p] + 0.5 * np.eye(120), xr[p].T @ (np.eye(classes)[labels[p]] - x[p] @ primary))
        assert rel_diff(models[k].refinement, primal) <= 1e-9


def test_beta_zero_is_the_primary_stream(synthetic):
    x, labels, classes = synthetic
    xr = refinement_features(x)
    primary, models = apfl(x, xr, labels, classes, partition(labels, 5, alpha=0.1, seed=1), APFLConfig(beta=0.0))
    for model in models.values():
        np.testing.assert_array_equal(model.predict(x, xr), np.argmax(x @ primary, axis=1))
    _, weighted = apfl(x, xr, labels, classes, partition(labels, 5, alpha=0.1, seed=1), APFLConfig(beta=1.0))
    assert any(not np.array_equal(m.predict(x, xr), np.argmax(x @ primary, axis=1)) for m in weighted.values())


@pytest.mark.parametrize("kwargs, message", [(dict(lam=0.0), "lam"), (dict(beta=1.5), "beta"), (dict(beta=-0.1), "beta")])
def test_bad_apfl_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        APFLConfig(**kwargs)


def test_apfl_run_reports_personalized_and_global_metrics(tmp_path, capsys):
    out = tmp_path / "apfl.json"
    args = ["run", "--dataset", "digits", "--resolution", "32", "--clients", "10", "--alpha", "0.1", "--quiet",
            "--algorithm", "apfl", "--refine-width", "256", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["max_rel_diff_to_centralized"] <= 1e-8
    assert len(metrics["per_client_accuracy"]) == 10
    assert metrics["personalized_accuracy"] == pytest.approx(np.mean([a for a in metrics["per_client_accuracy"] if a is not None]))
    assert metrics["personalized_accuracy"] > metrics["global_model_personalized_accuracy"]
    capsys.readouterr()
    assert main([*args[:-2], "--algorithm", "afl", "--beta", "0.2", "--out", str(tmp_path / "x.json")]) == 2
    assert "beta only apply to --algorithm apfl" in capsys.readouterr().err
