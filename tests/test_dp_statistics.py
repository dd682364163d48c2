"""DP on the analytic statistics (secure_afl/privacy.py): calibration, sensitivity, noise, placements, solve."""

import json
import math

import numpy as np
import pytest

from protocols import PlaintextProtocol
from secure_afl.algorithms.afl import AFLClient, AFLConfig, AFLServer, statistics_bound
from secure_afl.algorithms.apfl import APFLClient, APFLConfig
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.data.partition import partition
from secure_afl.errors import ConfigError
from secure_afl.privacy import (StatisticsPrivacy, epsilon_of, noise_multiplier_for, noisy_ridge_solve,
                                statistics_sensitivity, with_noise_key)
from secure_afl.algorithms.registry import algorithm
from secure_afl.runner import Timer, federate
from secure_afl.statistics import StatisticsLayout, compute_statistics, packed_statistics

DELTA = 1e-5


def privacy(epsilon=1.0, placement="local", min_clients=1, clients=5, clip=1.0, **kw):
    return StatisticsPrivacy(epsilon, DELTA, clip, placement, min_clients, clients, **kw)


def unit_rows(synthetic):
    x, labels, classes = synthetic
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels, classes


@pytest.mark.parametrize("z, releases, expected", [(1.0, 1, 4.73), (2.0, 1, 2.17), (4.845, 1, 0.822),
                                                   (4.845, 6, 2.19), (8.0, 1, 0.478)])
def test_calibration_reproduces_the_spec_table(z, releases, expected):
    assert epsilon_of(z, DELTA, releases) == pytest.approx(expected, abs=0.006)


@pytest.mark.parametrize("epsilon, releases", [(0.5, 1), (1.0, 1), (8.0, 1), (2.0, 5)])
def test_noise_multiplier_meets_the_target_and_is_nearly_tight(epsilon, releases):
    z = noise_multiplier_for(epsilon, DELTA, releases)
    assert epsilon_of(z, DELTA, releases) <= epsilon
    assert epsilon_of(0.97 * z, DELTA, releases) > epsilon * 0.99  # not a needlessly large z


@pytest.mark.parametrize("clip", [0.5, 1.0, 3.0])
def test_sensitivity_bounds_adding_or_removing_any_record(clip):
    """Brute force: remove each record of random data sets in turn; the released vector moves by ≤ Δ₂."""
    rng = np.random.default_rng(3)
    dim, classes = 6, 4
    layout = StatisticsLayout(dim, classes)
    mechanism = privacy(clip=clip)
    worst = 0.0
    for _ in range(5):
        x = rng.standard_normal((12, dim))
        x *= clip * rng.uniform(0.2, 1.0, (12, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
        x[0] *= clip / np.linalg.norm(x[0])  # one row on the boundary
        labels = rng.integers(0, classes, 12)
        full = mechanism.release(packed_statistics(x, labels, classes), layout)
        for i in range(12):
            keep = np.arange(12) != i
            fewer = mechanism.release(packed_statistics(x[keep], labels[keep], classes), layout)
            worst = max(worst, float(np.linalg.norm(full - fewer)))
    assert worst <= statistics_sensitivity(clip) * (1 + 1e-12)
    assert worst > 0.75 * statistics_sensitivity(clip)  # the bound is not vacuous


def test_noise_is_fresh_per_client_and_never_from_the_public_seed(synthetic):
    x, labels, classes = unit_rows(synthetic)
    mechanism = privacy(epsilon=4.0)
    bound = mechanism.bound(statistics_bound(len(labels), 1.0))
    first = AFLClient(x, labels, classes, mechanism, bound).contribute(_spec(x.shape[1], classes, mechanism))
    second = AFLClient(x, labels, classes, mechanism, bound).contribute(_spec(x.shape[1], classes, mechanism))
    layout = StatisticsLayout(x.shape[1], classes)
    clean = mechanism.release(packed_statistics(x, labels, classes), layout)
    sent = layout.triangle + x.shape[1] * classes
    assert not np.allclose(first, second)
    noise = first[:sent] - clean[:sent]
    assert np.std(noise) == pytest.approx(mechanism.share_sigma, rel=0.15)
    assert np.all(first[sent:] == 0)  # n and the class counts are not sent


def test_a_site_key_draws_the_same_release_in_every_process_and_other_keys_or_rounds_draw_fresh_noise(synthetic):
    """A deployed site rebuilds its client for every message: under its secret key every rebuild re-sends one
    release (no second draw a server could average), another key or round name is independent noise."""
    x, labels, classes = unit_rows(synthetic)
    key, other = b"k" * 32, b"o" * 32
    job = with_noise_key(APFLConfig(primary=AFLConfig(privacy=privacy(epsilon=4.0))), key)
    mechanism = job.primary.privacy
    assert mechanism.noise_key == key and "noise_key" not in repr(job) and key.hex() not in repr(job)
    assert with_noise_key(APFLConfig(), key) == APFLConfig()  # without DP nothing changes
    bound = mechanism.bound(statistics_bound(len(labels), 1.0))
    spec = _spec(x.shape[1], classes, mechanism)
    again = [APFLClient(x, x, labels, classes, mechanism, bound).contribute(spec) for _ in range(2)]
    assert np.array_equal(*again)
    layout = StatisticsLayout(x.shape[1], classes)
    sent = layout.triangle + x.shape[1] * classes
    clean = mechanism.release(packed_statistics(x, labels, classes), layout)[:sent]
    fresh = [(m.privatize(packed_statistics(x, labels, classes), layout, bound, name)[0][:sent] - clean)
             for m, name in ((mechanism, "afl/statistics"), (mechanism, "other"),
                             (with_noise_key(mechanism, other), "afl/statistics"))]
    assert np.allclose(fresh[0], again[0][:sent] - clean, rtol=0, atol=1e-9)  # the client clips rows in float64
    assert all(np.std(n) == pytest.approx(mechanism.share_sigma, rel=0.15) for n in fresh)
    assert all(abs(np.corrcoef(fresh[0], n)[0, 1]) < 0.2 for n in fresh[1:])  # 324 entries: independent draws


def _spec(dim, classes, mechanism):
    server = AFLServer(dim, classes, AFLConfig(privacy=mechanism), statistics_bound(600, 1.0))
    return server.next_round()


def test_round_declares_the_noisy_layout_and_a_bound_with_a_tail_margin():
    mechanism = privacy(epsilon=2.0)
    spec = _spec(5, 3, mechanism)
    assert spec.layout["counts"] is False and spec.layout["label_scale"] == 1.0
    assert spec.bound == pytest.approx(statistics_bound(600, 1.0) + 10 * mechanism.share_sigma)
    assert mechanism.clip_probability(spec.length) < 1e-15


def test_entries_beyond_the_bound_are_clipped_and_counted():
    mechanism = privacy(epsilon=1.0)
    layout = StatisticsLayout(8, 3)
    noisy, clipped = mechanism.privatize(np.zeros(layout.length), layout, bound=mechanism.share_sigma, release="r")
    assert clipped > 0 and np.abs(noisy).max() <= mechanism.share_sigma
    assert clipped == pytest.approx(0.317 * (layout.triangle + 24), abs=12)  # P(|N| > σ) ≈ 0.317


@pytest.mark.parametrize("placement, t", [("local", 1), ("distributed", 4), ("distributed", 7)])
def test_any_admissible_sum_carries_at_least_sigma(placement, t):
    """Distributed: each share is σ/√t, so the t-client sum (the smallest a protocol opens) has std σ."""
    mechanism = privacy(epsilon=2.0, placement=placement, min_clients=t, clients=10)
    layout = StatisticsLayout(10, 4)
    sent = layout.triangle + 40
    sums = np.array([sum(mechanism.privatize(np.zeros(layout.length), layout, 1e9, "r")[0][:sent] for _ in range(t))
                     for _ in range(40)])
    assert mechanism.share_sigma == pytest.approx(mechanism.sigma / math.sqrt(t))
    assert np.std(sums) == pytest.approx(mechanism.sigma, rel=0.05)  # 3800 samples: ±5 % is > 4 standard errors


@pytest.mark.parametrize("solve", ["eig-clip", "adassp"])
def test_the_solve_never_fails_on_an_indefinite_gram(solve):
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((30, 30)) * 50
    gram = (noise + noise.T) / 2
    assert np.linalg.eigvalsh(gram).min() < -100
    weights = noisy_ridge_solve(gram, rng.standard_normal((30, 4)), 0.1, 50.0, solve)
    assert np.all(np.isfinite(weights)) and np.abs(weights).max() < 1.0


def test_eig_clip_without_noise_is_exact_ridge(synthetic):
    x, labels, classes = synthetic
    stats = compute_statistics(x, labels, classes)
    exact = np.linalg.solve(stats.gram + 0.5 * np.eye(stats.dim), stats.cross)
    assert np.allclose(noisy_ridge_solve(stats.gram, stats.cross, 0.5, 0.0, "eig-clip"), exact, rtol=1e-9, atol=1e-12)


def _dp_accuracy(x, labels, classes, epsilon, draws=4):
    parts = partition(labels, 5, alpha=1.0, seed=1)
    scores = []
    for _ in range(draws):
        mechanism = None if epsilon is None else privacy(epsilon=epsilon, clients=5)
        config = AFLConfig(gamma=0.1, privacy=mechanism)
        server = AFLServer(x.shape[1], classes, config, statistics_bound(len(labels), 1.0))
        bound = server.next_round().bound
        clients = {k: AFLClient(x[p], labels[p], classes, mechanism, bound) for k, p in enumerate(parts)}
        federate(server, clients, PlaintextProtocol(), Timer())
        scores.append(server.model().accuracy(x, labels))
    return float(np.mean(scores))


def test_accuracy_falls_as_epsilon_shrinks(synthetic):
    x, labels, classes = unit_rows(synthetic)
    clean, loose, tight = (_dp_accuracy(x, labels, classes, e) for e in (None, 64.0, 0.3))
    assert clean > 0.8
    assert loose > tight + 0.15
    assert clean >= loose - 0.05


def test_apfl_personalizes_on_the_noisy_primary_model(synthetic):
    """APFL's one release is AFL's noisy round; the refinement stream stays on the client and fits its residual."""
    x, labels, classes = unit_rows(synthetic)
    parts = partition(labels, 4, alpha=1.0, seed=2)
    mechanism = privacy(epsilon=2.0, clients=4)
    server = AFLServer(x.shape[1], classes, AFLConfig(privacy=mechanism), statistics_bound(len(labels), 1.0))
    bound = server.next_round().bound
    refine = np.tanh(x @ np.random.default_rng(4).standard_normal((x.shape[1], 40)))
    clients = {k: APFLClient(x[p], refine[p], labels[p], classes, mechanism, bound) for k, p in enumerate(parts)}
    federate(server, clients, PlaintextProtocol(), Timer())
    primary = server.model()
    model = clients[0].personalize(primary.weights, APFLConfig(lam=0.1, beta=1.0))
    own = parts[0]
    assert model.accuracy(x[own], refine[own], labels[own]) > primary.accuracy(x[own], labels[own])


@pytest.mark.parametrize("options, message", [
    ({"dp_epsilon": 1.0, "dp_placement": "distributed", "protocol": "plaintext"}, "needs a secure protocol"),
    ({"dp_placement": "local"}, "need --dp-epsilon"),
    ({"dp_solve": "adassp"}, "need --dp-epsilon"),
    ({"dp_epsilon": 1.0, "dp_clip": 2.0}, "clip norm C is --max-norm"),
    ({"dp_placement": "local", "algorithm": "fedavg"}, "only apply to --algorithm afl / apfl"),
])
def test_config_refusals(options, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**options).validate()


@pytest.mark.parametrize("options, message", [
    ({"dp_epsilon": 1.0, "restore": True, "gamma": 0.0}, "restore"),
    ({"dp_epsilon": 1.0, "fraction_bits": 2}, "cannot resolve the DP noise"),
    ({"dp_epsilon": -1.0}, "positive"),
    ({"dp_epsilon": 0.01}, "below what the RDP accountant can certify"),
])
def test_algorithm_refusals(options, message):
    config = RunConfig(**options)
    config.validate()
    with pytest.raises(ConfigError, match=message):
        algorithm(config.algorithm).configure(config)


def test_distributed_placement_uses_the_protocols_minimum(synthetic):
    config = RunConfig(dp_epsilon=1.0, dp_placement="distributed", clients=9, min_clients=5)
    config.validate()
    mechanism = algorithm(config.algorithm).configure(config).privacy
    assert mechanism.min_clients == 5 and mechanism.share_sigma == pytest.approx(mechanism.sigma / math.sqrt(5))


QUICK = ["run", "--dataset", "digits", "--resolution", "32", "--clients", "10", "--alpha", "0.1"]


def test_cli_run_reports_the_guarantee(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main([*QUICK, "--protocol", "plaintext", "--dp-epsilon", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    dp = json.loads(out.read_text())["metrics"]["dp"]
    assert dp["epsilon"] <= 2.0 and dp["delta"] == DELTA and dp["placement"] == "local" and dp["releases"] == 1
    assert dp["sigma"] == pytest.approx(dp["noise_multiplier"] * math.sqrt(2))
    assert dp["rows_clipped"] > 0 and dp["solve"] == "eig-clip"
    assert f"ε {dp['epsilon']:.3g}, δ 1e-05, z {dp['noise_multiplier']:.3g}, σ {dp['sigma']:.3g}, C 1" in table


def test_cli_refuses_distributed_noise_in_plaintext(capsys):
    assert main([*QUICK, "--protocol", "plaintext", "--dp-epsilon", "2", "--dp-placement", "distributed"]) == 2
    assert "needs a secure protocol" in capsys.readouterr().err


def test_distributed_noise_survives_masking_and_dropout(synthetic):
    """Under masking with a dropout, the server's sum is the data plus the survivors' shares: at least t of them."""
    from protocols import make_protocol

    x, labels, classes = unit_rows(synthetic)
    parts = partition(labels, 6, alpha=1.0, seed=3)
    mechanism = privacy(epsilon=2.0, placement="distributed", min_clients=4, clients=6)
    server = AFLServer(x.shape[1], classes, AFLConfig(privacy=mechanism), statistics_bound(len(labels), 1.0))
    bound = server.next_round().bound
    clients = {k: AFLClient(x[p], labels[p], classes, mechanism, bound) for k, p in enumerate(parts)}
    protocol = make_protocol("mask", min_clients=4, dropout={"input": 0.2}, dropout_seed=1)
    report = federate(server, clients, protocol, Timer())
    survivors = report["included_clients"]
    assert 4 <= len(survivors) < 6
    layout = StatisticsLayout(x.shape[1], classes)
    clean = sum(mechanism.release(packed_statistics(x[parts[k]], labels[parts[k]], classes), layout) for k in survivors)
    noise = layout.pack(server.total)[: layout.triangle] - clean[: layout.triangle]
    assert np.std(noise) == pytest.approx(mechanism.share_sigma * math.sqrt(len(survivors)), rel=0.15)
    assert np.std(noise) >= 0.85 * mechanism.sigma
