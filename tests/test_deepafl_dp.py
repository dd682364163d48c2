"""DP on DeepAFL's 2T + 1 releases: public layer clips bound every release's sensitivity, bounds come from
the clips, the releases compose, a repeated round is not a second release, and the clipped network is
still one function of an image whatever the partition."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from protocols import make_protocol
from secure_afl.algorithms.deepafl import DeepAFLClient, DeepAFLConfig, DeepAFLServer, centralized
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.data.partition import partition
from secure_afl.errors import ConfigError
from secure_afl.privacy import StatisticsPrivacy, statistics_sensitivity
from secure_afl.runner import Timer, federate

DELTA = 1e-5


def private(noise, clients=4, placement="local", min_clients=1, layers=2, **config):
    mechanism = StatisticsPrivacy(None, DELTA, 1.0, placement, min_clients, clients, 2 * layers + 1, noise=noise)
    return DeepAFLConfig(width=16, residual_width=12, layers=layers, lam=0.5, gamma=0.05, privacy=mechanism, **config)


def normalised(synthetic):
    x, labels, classes = synthetic
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels, classes


def run(x, labels, classes, parts, config):
    server = DeepAFLServer(x.shape[1], classes, config, len(labels), 1.0)
    clients = {k: DeepAFLClient(x[p], labels[p], classes, config, 1.0) for k, p in enumerate(parts)}
    federate(server, clients, make_protocol("plaintext"), Timer())
    return server, clients


def released(config, x, labels, classes, specs):
    """A fresh client's vectors for the given round specs, in order (without noise: z is negligible)."""
    client = DeepAFLClient(x, labels, classes, config, 1.0)
    return [client.contribute(spec) for spec in specs]


class Recording(DeepAFLClient):
    """A client that keeps the round specs (bounds and broadcasts) its server declared."""

    def __init__(self, *args):
        super().__init__(*args)
        self.specs = []

    def contribute(self, spec):
        self.specs.append(spec)
        return super().contribute(spec)


def test_every_release_moves_by_at_most_its_sensitivity_when_a_record_is_removed(synthetic):
    """Brute force over records, with rows scaled up so every layer clip bites: each of the 2T + 1 releases moves
    by ≤ √2 C² of its own clip norm (the noise is negligible here: z = 1e-9)."""
    x, labels, classes = synthetic
    x = 3.0 * x[:40] / np.linalg.norm(x[:40], axis=1, keepdims=True)  # beyond max_norm 1: Φ_0 rows exceed C_Φ
    labels = labels[:40]
    config = private(1e-9, clients=1, row_rms=0.3, residual_clip=0.5)
    server = DeepAFLServer(x.shape[1], classes, config, len(labels), 1.0)
    client = Recording(x, labels, classes, config, 1.0)
    federate(server, {0: client}, make_protocol("plaintext"), Timer())
    assert all(count > 0 for count in client.rows_clipped.values())
    clips = config.clips(x.shape[1])
    sensitivity = [statistics_sensitivity(clips.phi if spec.name.startswith("deepafl/classifier") else clips.features)
                   for spec in client.specs]
    assert len(client.specs) == 5
    full = released(config, x, labels, classes, client.specs)
    worst = 0.0
    for i in range(0, 40, 3):
        keep = np.delete(np.arange(40), i)
        without = released(config, x[keep], labels[keep], classes, client.specs)
        for a, b, delta in zip(full, without, sensitivity):
            worst = max(worst, np.linalg.norm(a - b) / delta)
    assert 0.3 < worst <= 1.0 + 1e-6


def test_bounds_come_from_the_clip_norms_and_the_layout_declares_the_noise(synthetic):
    x, labels, classes = normalised(synthetic)
    config = private(2.0, clients=3)
    server = DeepAFLServer(x.shape[1], classes, config, 500, 1.0)
    spec = server.next_round()
    clips = config.clips(x.shape[1])
    mechanism = config.privacy.with_clip(clips.phi)
    assert spec.bound == pytest.approx(500 * clips.phi**2 * (1 + 1e-3) + 10 * mechanism.share_sigma)
    assert spec.layout["counts"] is False and spec.layout["label_scale"] == clips.phi
    assert spec.layout["noise_sigma"] == pytest.approx(2.0 * math.sqrt(2) * clips.phi**2)


def test_a_repeated_round_resends_the_same_release(synthetic):
    x, labels, classes = normalised(synthetic)
    config = private(1.0)
    server = DeepAFLServer(x.shape[1], classes, config, len(labels), 1.0)
    client = DeepAFLClient(x[:50], labels[:50], classes, config, 1.0)
    spec = server.next_round()
    first = client.contribute(spec)
    assert np.array_equal(client.contribute(spec), first)
    again = DeepAFLClient(x[:50], labels[:50], classes, config, 1.0).contribute(spec)
    assert not np.allclose(again, first)  # fresh noise per client (CSPRNG), never the public seed


@pytest.mark.parametrize("alpha, clients", [(0.1, 6), (10.0, 3)])
def test_the_clipped_network_is_partition_invariant(synthetic, alpha, clients):
    """With negligible noise the federated DP network equals the pooled one: the clips act per row."""
    x, labels, classes = synthetic
    x = 2.0 * x / np.linalg.norm(x, axis=1, keepdims=True)
    config = private(1e-9, clients=clients, row_rms=0.5)
    pooled, _ = run(x, labels, classes, [np.arange(len(labels))], config)
    federated, fed_clients = run(x, labels, classes, partition(labels, clients, alpha=alpha, seed=1), config)
    assert sum(c.rows_clipped["phi"] for c in fed_clients.values()) > 0
    assert federated.model().relative_difference(pooled.model()) < 1e-6
    assert np.array_equal(federated.model().predict(x), pooled.model().predict(x))


def test_accuracy_tracks_the_noise(synthetic):
    x, labels, classes = normalised(synthetic)
    parts = partition(labels, 4, alpha=1.0, seed=0)
    clean = centralized(x, labels, classes, replace(private(1.0), privacy=None), 1.0).accuracy(x, labels)
    quiet = run(x, labels, classes, parts, private(1e-3))[0].model().accuracy(x, labels)
    loud = run(x, labels, classes, parts, private(30.0))[0].model().accuracy(x, labels)
    assert quiet >= clean - 0.05 and loud < quiet - 0.1


def test_refusals():
    with pytest.raises(ConfigError, match="need --dp-epsilon"):
        RunConfig(algorithm="deepafl", dp_row_rms=0.5).validate()
    with pytest.raises(ConfigError, match="only apply to --algorithm deepafl"):
        RunConfig(algorithm="afl", dp_epsilon=1.0, dp_residual_clip=2.0).validate()
    with pytest.raises(ConfigError, match="row_rms"):
        DeepAFLConfig(row_rms=0.0)


QUICK = ["run", "--dataset", "digits", "--resolution", "32", "--clients", "6", "--alpha", "1", "--algorithm", "deepafl",
         "--depth", "2", "--deep-width", "64", "--residual-width", "32"]


def test_cli_composes_every_release_through_masking(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main([*QUICK, "--protocol", "mask", "--dp-epsilon", "4", "--dp-placement", "distributed",
                 "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    dp = document["metrics"]["dp"]
    assert dp["releases"] == 5 and dp["epsilon"] <= 4.0 and dp["placement"] == "distributed"
    assert set(dp["layer_clips"]) == {"phi", "residual_features", "residuals"}
    assert dp["layer_clips"]["phi"] == pytest.approx(8.0) and dp["layer_clips"]["residual_features"] == pytest.approx(
        math.sqrt(32))
    assert dp["release_sigma"]["classifier"] == pytest.approx(dp["noise_multiplier"] * math.sqrt(2) * 64)
    assert dp["share_sigma"] == pytest.approx(dp["sigma"] / math.sqrt(dp["min_clients"]))
    assert "5 release(s)" in capsys.readouterr().out
    assert 0.2 < document["metrics"]["accuracy"] <= 1.0
