"""FedACnnL and pFedACnnL: every layer equals an independent centralized layer-wise training, whatever the partition,
the client count, the protocol and the mini-batch size; the declared bounds hold; runs save, load and predict;
pFedACnnL's personal models follow only from what each client holds and receives; the closed-form attacks read
the per-layer rounds in plaintext and not under masking."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import secure_afl
from attacks.base import ATTACKS, ServerView
from attacks.case import Case
from attacks.evaluation import evaluate
from attacks.gradient.updates import broadcast_model
import attacks.statistics  # noqa: F401  (registers the closed-form attacks)
from protocols import make_protocol
from secure_afl.algorithms import patches
from secure_afl.algorithms.convnet import PIXELS, pixel_dataset
from secure_afl.algorithms.fedacnnl import (ACNN_LR, FedACnnLClient, FedACnnLConfig, FedACnnLServer, build_network,
                                           encoding_matrix, sample_rows, target_table, train_centrally)
from secure_afl.algorithms.fedavg import build as fedavg_build
from secure_afl.algorithms.afl import AFLConfig
from secure_afl.algorithms.pfedacnnl import PFedACnnLClient, PFedACnnLConfig, PFedACnnLServer, group_clients
from secure_afl.algorithms.registry import algorithm
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.data.datasets import load_dataset
from secure_afl.data.partition import partition
from secure_afl.errors import ConfigError, FeatureError
from secure_afl.model import Model
from secure_afl.runner import Timer, federate, load_features, plan_run, train

CLASSES = 4
CONFIG = FedACnnLConfig(layers=2, channels=6, slope=0.2, layer_gamma=0.5, head=AFLConfig(gamma=3.0), batch=5,
                        pixel_bound=2.0)


@pytest.fixture(scope="module")
def pixels():
    """48 images of 32 px whose class shifts one channel's brightness, pixels within the declared ±2."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(CLASSES), 12)
    images = rng.uniform(-1.0, 1.0, (48, 3, 32, 32))
    images[np.arange(48), labels % 3] += 0.6 * (labels[:, None, None] / CLASSES)
    return torch.as_tensor(images.reshape(48, PIXELS)), labels


def centralized(x, labels, config=CONFIG):
    """Layer-wise ridge written out independently: patches by unfold, the layer applied by conv2d."""
    maps, layers = x.reshape(-1, 3, 32, 32).to(torch.float64), []
    for layer in range(1, config.layers + 1):
        rows = F.unfold(maps, 3, padding=1).transpose(1, 2)
        positions = rows.shape[1]
        a = np.hstack([rows.reshape(-1, rows.shape[2]).numpy(), np.ones((rows.shape[0] * positions, 1))])
        t = target_table(config, layer, CLASSES)[np.repeat(labels, positions)]
        w = np.linalg.solve(a.T @ a + config.layer_gamma * np.eye(a.shape[1]), a.T @ t)
        kernel = torch.as_tensor(w[:-1].T.reshape(config.channels, maps.shape[1], 3, 3))
        z = F.conv2d(maps, kernel, torch.as_tensor(w[-1]), padding=1)
        maps = F.avg_pool2d(torch.where(z >= 0, z, config.slope * z), 2)
        layers.append(w)
    a = np.hstack([maps.flatten(1).numpy(), np.ones((len(labels), 1))])
    head = np.linalg.solve(a.T @ a + config.head.gamma * np.eye(a.shape[1]), a.T @ np.eye(CLASSES)[labels])
    return layers, head


def federated(x, labels, parts, config=CONFIG, protocol="plaintext"):
    server = FedACnnLServer(config, CLASSES, max(len(p) for p in parts))
    clients = {k: FedACnnLClient(x[p], labels[p], CLASSES, config) for k, p in enumerate(parts) if len(p)}
    report = federate(server, clients, make_protocol(protocol), Timer())
    return server, report


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("protocol, alpha, clients", [("plaintext", 0.1, 8), ("plaintext", 100.0, 3), ("mask", 0.1, 8)])
def test_every_layer_equals_centralized_layer_wise_training(pixels, protocol, alpha, clients):
    x, labels = pixels
    layers, head = centralized(x, labels)
    server, report = federated(x, labels, partition(labels, clients, alpha=alpha, seed=1), protocol=protocol)
    model = server.model()
    assert [r["round"] for r in report["per_round"]] == ["fedacnnl/layer-1", "fedacnnl/layer-2", "fedacnnl/head"]
    assert [w.shape for w in model.layers] == [(28, 6), (55, 6)] and model.head.shape == (6 * 8 * 8 + 1, CLASSES)
    for federated_w, central_w in zip(model.layers + [model.head], layers + [head]):
        assert relative(federated_w, central_w) <= 1e-9


def test_partition_client_count_and_batch_size_change_nothing(pixels):
    x, labels = pixels
    one = federated(x, labels, [np.arange(48)])[0].model()
    for parts, batch in [(partition(labels, 12, alpha=0.05, seed=5), 2), ([np.arange(0, 48, 2), np.arange(1, 48, 2)], 48),
                         ([np.arange(48)], 7)]:
        other = federated(x, labels, parts, replace(CONFIG, batch=batch))[0].model()
        assert other.relative_difference(one) <= 1e-12


def test_mask_gives_the_plaintext_model(pixels):
    x, labels = pixels
    parts = partition(labels, 6, alpha=0.5, seed=2)
    plain, masked = (federated(x, labels, parts, protocol=p)[0].model() for p in ("plaintext", "mask"))
    assert masked.relative_difference(plain) <= 1e-9
    assert np.array_equal(masked.predict(x), plain.predict(x))


def test_patch_algebra_is_the_convolution(pixels):
    x, _ = pixels
    w = np.random.default_rng(0).standard_normal((28, 5))
    maps = patches.images(x[:3])
    direct = F.conv2d(maps, torch.as_tensor(w[:-1].T.reshape(5, 3, 3, 3)), torch.as_tensor(w[-1]), padding=1)
    assert torch.allclose(patches.affine(patches.windows(maps), w), direct.flatten(2).transpose(1, 2), atol=1e-12)
    assert torch.equal(patches.patch_rows(maps)[..., :-1], patches.windows(maps))


def test_targets_invert_the_activation_of_the_clipped_encoding():
    e = encoding_matrix(CONFIG, 1, CLASSES)
    assert np.allclose(e @ e.T, CONFIG.channels * np.eye(CLASSES))  # orthogonal rows, mean squared entry 1
    t = target_table(CONFIG, 1, CLASSES)
    activated = patches.leaky_relu(torch.as_tensor(t), CONFIG.slope).numpy()
    assert np.allclose(activated, np.clip(e, -1.0, 1.0)) and np.abs(t).max() <= 1.0 / CONFIG.slope + 1e-12
    assert not np.allclose(target_table(CONFIG, 2, CLASSES), t)  # each layer has its own E_l
    gaussian = encoding_matrix(replace(CONFIG, encoding="gaussian"), 1, CLASSES)
    assert gaussian.shape == (CLASSES, 6) and np.array_equal(gaussian, encoding_matrix(
        replace(CONFIG, encoding="gaussian"), 1, CLASSES))


def test_declared_bounds_hold_and_follow_the_broadcast_weights(pixels):
    x, labels = pixels
    parts = partition(labels, 4, alpha=1.0, seed=0)
    server, _ = federated(x, labels, parts)
    for layer in range(1, CONFIG.layers + 2):  # every client's vector of every round within the public bound
        spec = server.spec(layer)
        client = FedACnnLClient(x[parts[0]], labels[parts[0]], CLASSES, CONFIG)
        weights = server.layers[: layer - 1]
        assert np.abs(client.statistics(layer, weights)).max() <= spec.bound
    maps = patches.forward(x, server.layers, CONFIG.slope)
    assert float(maps.abs().max()) <= server.entry_bounds[-1]
    with pytest.raises(FeatureError, match="public bound"):  # pixels outside the declared range: refused at once
        FedACnnLClient(3.0 * x, labels, CLASSES, CONFIG)


@pytest.mark.parametrize("kwargs, message", [
    ({"slope": 0.0}, "invertible"), ({"layers": 5}, "1 to 4"), ({"encoding": "hadamard"}, "unknown --acnn-encoding"),
    ({"layer_gamma": 0.0}, "acnn-gamma"), ({"batch": 0}, "at least 1")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        replace(CONFIG, **kwargs)


def test_acnn_options_are_scoped():
    with pytest.raises(ConfigError, match="acnn_layers"):
        RunConfig(algorithm="afl", acnn_layers=3).validate()
    with pytest.raises(ConfigError, match="cnn_width"):
        RunConfig(algorithm="fedacnnl", cnn_width=8).validate()


def test_cli_and_api_runs_save_load_and_predict(tmp_path):
    options = dict(algorithm="fedacnnl", protocol="plaintext", dataset="samples-cifar10", clients=4, partition="iid",
                   acnn_channels=10)
    result = secure_afl.run(**options)
    metrics = result.results["metrics"]
    assert metrics["max_rel_diff_to_centralized"] <= 1e-9
    assert [r["round"] for r in result.results["bytes"]["per_round"]] == [
        "fedacnnl/layer-1", "fedacnnl/layer-2", "fedacnnl/head"]
    assert len(metrics["acnn"]["round_seconds"]) == 3
    dataset = load_dataset("samples-cifar10")
    rows, test_labels = pixel_dataset(dataset, dataset.test).numpy(), dataset.labels(dataset.test)
    saved = result.model.save(tmp_path / "model.npz")
    loaded = Model.load(saved)
    assert np.array_equal(loaded.predict(rows), result.model.predict(rows))
    assert loaded.score(rows, test_labels) == metrics["accuracy"]
    out, model_path = tmp_path / "run.json", tmp_path / "cli.npz"
    assert main(["run", "--algorithm", "fedacnnl", "--protocol", "mask", "--dataset", "samples-cifar10",
                 "--clients", "4", "--partition", "iid", "--acnn-channels", "10", "--acnn-batch", "3", "--quiet",
                 "--out", str(out), "--save-model", str(model_path)]) == 0
    cli_model = Model.load(model_path)
    # masked, with another batch size: the same network up to the fixed-point encoding's resolution (2^-f, f from
    # the public bound), which the head's ill-conditioned solve (641 dims, 18 images, γ = 0.1) magnifies
    assert cli_model.predictor.relative_difference(result.model.predictor) <= 1e-5
    assert np.array_equal(cli_model.predict(rows), result.model.predict(rows))


# pFedACnnL

def pfed_federation(x, labels, parts, job):
    server = PFedACnnLServer(job, CLASSES, max(len(p) for p in parts), len(parts))
    clients = {k: PFedACnnLClient(x[p], labels[p], CLASSES, job.base, k, len(parts)) for k, p in enumerate(parts)}
    report = federate(server, clients, make_protocol("plaintext"), Timer())
    return server, clients, report


def own_head_statistics(server, x, labels):
    a = np.hstack([server.model().head_inputs(x).numpy(), np.ones((len(labels), 1))])
    return a.T @ a, a.T @ np.eye(CLASSES)[labels]


@pytest.mark.parametrize("objective, candidate", [("proximal", 3.0), ("reweighted", 5.0)])
def test_personal_heads_are_the_stated_closed_forms(pixels, objective, candidate):
    x, labels = pixels
    parts = partition(labels, 4, alpha=0.2, seed=3)
    job = PFedACnnLConfig(CONFIG, objective, candidates=(candidate,))
    server, clients, _ = pfed_federation(x, labels, parts, job)
    head, total = server.group_of(1)
    assert np.array_equal(head, server.model().head)  # no grouping: W_g is the global head
    g, h = own_head_statistics(server, x[parts[1]], labels[parts[1]])
    eye = np.eye(len(g))
    expected = (np.linalg.solve(g + candidate * eye, h + candidate * head) if objective == "proximal" else
                np.linalg.solve(total.gram + (candidate - 1) * g + CONFIG.head.gamma * eye,
                                total.cross + (candidate - 1) * h))
    own = clients[1].head_statistics(server.layers, np.arange(len(parts[1])))
    assert relative(clients[1].solve(job, candidate, own, head, total), expected) <= 1e-9
    assert np.array_equal(clients[1].solve(job, float("inf") if objective == "proximal" else 1.0, own, head, total),
                          head)  # λ = ∞ / α = 1: W_g itself


def test_a_personal_model_ignores_how_the_other_clients_split_their_data(pixels):
    x, labels = pixels
    job = PFedACnnLConfig(CONFIG, "reweighted")
    mine = np.flatnonzero(labels < 2)[::2]
    rest = np.setdiff1d(np.arange(48), mine)
    models = []
    for others in ([rest], np.array_split(rest, 3)):
        server, clients, _ = pfed_federation(x, labels, [mine, *others], job)
        models.append(clients[0].personalize(job, server.layers, *server.group_of(0)))
    assert models[0][1] == models[1][1] and models[0][0].relative_difference(models[1][0]) <= 1e-9


def test_grouping_by_histograms_respects_the_public_minimum(pixels):
    x, labels = pixels
    parts = [np.flatnonzero(labels == c)[i::2] for c in range(CLASSES) for i in range(2)]  # 2 clients per class
    job = PFedACnnLConfig(CONFIG, groups=4, min_group=2)
    server, clients, report = pfed_federation(x, labels, parts, job)
    names = [r["round"] for r in report["per_round"]]
    assert names[3] == "pfedacnnl/histograms" and names[4:] == [f"pfedacnnl/group-{g}" for g in range(4)]
    assert server.groups == [[0, 1], [2, 3], [4, 5], [6, 7]]  # clients with one label each group by it
    group = server.groups[1]
    pooled = np.concatenate([parts[k] for k in group])
    g, h = own_head_statistics(server, x[pooled], labels[pooled])
    assert relative(server.group_sums[1].gram, g) <= 1e-12 and relative(server.group_sums[1].cross, h) <= 1e-12
    assert [r["clients_asked"] for r in report["per_round"][4:]] == [2, 2, 2, 2]
    # a lone outlier is merged, never aggregated alone; a group below the minimum is refused
    histograms = {0: np.array([9, 0]), 1: np.array([8, 1]), 2: np.array([0, 9]), 3: np.array([1, 8]),
                  4: np.array([5, 5])}
    assert all(len(members) >= 2 for members in group_clients(histograms, 3, 2, seed=0))
    server.groups = [[0], [1, 2, 3, 4, 5, 6, 7]]
    with pytest.raises(ConfigError, match="fewer than --pfed-min-group 2"):
        server.group_spec(0)


def test_grouping_is_refused_where_it_would_defeat_the_protocol():
    with pytest.raises(ConfigError, match="needs --protocol plaintext"):
        RunConfig(algorithm="pfedacnnl", protocol="mask", pfed_groups=2).validate()
    with pytest.raises(ConfigError, match="need 12 clients"):
        RunConfig(algorithm="pfedacnnl", protocol="plaintext", clients=10, pfed_groups=4, pfed_min_group=3).validate()
    with pytest.raises(ConfigError, match="pfed_groups"):
        RunConfig(algorithm="fedacnnl", protocol="plaintext", pfed_groups=2).validate()
    with pytest.raises(ConfigError, match="min-group"):
        PFedACnnLConfig(min_group=1)


def test_personalized_accuracy_is_the_mean_of_each_clients_own_held_out_accuracy():
    config = RunConfig(algorithm="pfedacnnl", protocol="mask", dataset="samples-cifar10", clients=4, partition="iid",
                       acnn_channels=10, pfed_validation=0.5)
    plan = plan_run(config)
    timer = Timer()
    features = load_features(plan, timer)
    training = train(plan, features, timer)
    metrics = training.metrics
    job = algorithm("pfedacnnl").configure(config)
    personal = algorithm("pfedacnnl").personalize(job, training.server, training.clients)
    data = features.data
    own = [personal[k].accuracy(data.test_x[idx], data.test_y[idx]) for k, idx in enumerate(data.held_out_indices)]
    assert np.isfinite(own).sum() >= 1  # clients without held-out images are left out, as for APFL
    assert metrics["personalized_accuracy"] == pytest.approx(np.nanmean(own), abs=1e-12)
    assert metrics["max_rel_diff_to_centralized"] <= 1e-5  # the global model: FedACnnL's, masked (see above)
    assert set(metrics["acnn"]["choices"]) == {str(k) for k in range(4)}
    json.dumps(metrics["acnn"], allow_nan=False)  # λ = ∞ (W_g kept) is written as null: the results file is strict JSON
    assert metrics["acnn"]["personalization_download_bytes"] == training.server.head.nbytes


# the closed-form attacks on the per-layer rounds

def singleton_case(tmp_path, protocol, clients):
    config = RunConfig(algorithm="fedacnnl", protocol=protocol, dataset="samples-cifar10", clients=clients,
                       partition="iid", acnn_channels=10)
    return Case(config).run(tmp_path / protocol)


def test_plaintext_layer_rounds_give_a_singleton_clients_sample_away_exactly(tmp_path):
    case = singleton_case(tmp_path, "plaintext", 18)  # 18 images on 18 clients: every client holds one image
    view = ServerView(case.transcript)
    output = ATTACKS["singleton"]().run(view)
    assert output.applicable and set(output.rounds.values()) == {"attacked"}
    assert {item.space for item in output.items} == {"patch/1", "patch/2", "acnn-head/3"}
    broadcasts = {int(e.spec["layout"]["layer"]): (e.broadcast, e.spec["layout"]) for e in view.rounds()}
    config = view.config
    for item in output.items:  # each is the client's image's own row of that layer, exactly
        (sample,) = case.truth.client_indices[item.client]
        layer = int(item.space.split("/")[1])
        truth = sample_rows(config, *broadcasts[layer], case.truth.x[[sample]])[0]
        assert item.label == case.truth.labels[sample]
        assert np.max(np.abs(item.value - truth)) <= 1e-12 * np.max(np.abs(truth))
    assert len(output.items) == 3 * 18
    report = evaluate(ATTACKS["singleton"](), output, view, case.truth)  # scored in every layer's space
    assert report["metrics"]["recovered_fraction"] == 1.0
    counts = evaluate(ATTACKS["counts"](), ATTACKS["counts"]().run(view), view, case.truth)
    assert counts["metrics"]["recovered_fraction"] == 1.0  # per image, not per patch row


def test_masked_layer_rounds_leave_the_attacks_nothing(tmp_path):
    view = ServerView(singleton_case(tmp_path, "mask", 6).transcript)
    for name in ("singleton", "class-means", "counts"):
        output = ATTACKS[name]().run(view)
        assert not output.applicable and not output.items
        assert "masked" in output.reason and "fedacnnl/layer-1" in output.reason


# FedACnnL's network trained end to end by FedAvg (fedavg-cnn --cnn acnn): the gradient-FL baseline on the same CNN


def test_the_torch_network_is_fedacnnls_network(pixels):
    x, labels = pixels
    model = train_centrally(CONFIG, x, labels, CLASSES).model()
    network = build_network(CONFIG.architecture, CLASSES, seed=0)
    expected = model.scores(x)
    double = network.double().load(model)(x).detach().numpy()
    assert relative(double, expected) <= 1e-9
    assert np.array_equal(np.argmax(double, axis=1), model.predict(x))
    single = build_network(CONFIG.architecture, CLASSES, seed=0).load(model)(x.float())
    assert single.dtype == torch.float32
    assert relative(single.detach().numpy().astype(np.float64), expected) <= 1e-5
    assert model.accuracy(x, labels) > 0.5  # trained weights, not a trivial network


def quadrant_images(rng, count):
    """Images whose class (of 4) is the bright quadrant, under noise: a task a CNN learns in a few epochs."""
    labels = rng.integers(0, CLASSES, count)
    images = rng.normal(0.0, 0.5, (count, 3, 32, 32))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, :, 16 * row : 16 * row + 16, 16 * col : 16 * col + 16] += 1.0
    return torch.as_tensor(images.reshape(count, PIXELS), dtype=torch.float32), labels


def test_fedavg_trains_fedacnnls_network_end_to_end_under_masking():
    run_config = RunConfig(algorithm="fedavg-cnn", cnn="acnn", acnn_layers=2, acnn_channels=4, acnn_slope=0.2,
                           rounds=3, local_batch=8, protocol="mask", clients=4)
    job = algorithm("fedavg-cnn").configure(run_config)
    assert job.lr == ACNN_LR and job.architecture == {"layers": 2, "channels": 4, "slope": 0.2}
    rng = np.random.default_rng(5)
    train_x, train_y = quadrant_images(rng, 96)
    test_x, test_y = quadrant_images(rng, 64)
    data = SimpleNamespace(train_x=train_x, train_y=train_y, num_classes=CLASSES,
                           client_indices=np.array_split(np.arange(96), 4))
    server, clients = fedavg_build(job, data, 24, 1.0)
    report = federate(server, clients, make_protocol("mask"), Timer())
    assert [r["round"] for r in report["per_round"]] == ["fedavg/0", "fedavg/1", "fedavg/2"]
    network = build_network(job.architecture, CLASSES, job.seed)
    assert server.theta.shape == (sum(p.numel() for p in network.parameters()),)
    assert server.model().accuracy(test_x, test_y) >= 0.6  # chance is 0.25
    # every round records the architecture, from which an attacker rebuilds the broadcast model (attacks/gradient)
    rebuilt = broadcast_model(server.local_training(), server.theta)
    assert np.array_equal(rebuilt(test_x).argmax(dim=1).numpy(), server.model().predict(test_x))


def test_the_runner_runs_fedavg_on_the_acnn_network_and_records_its_architecture():
    result = secure_afl.run(algorithm="fedavg-cnn", cnn="acnn", protocol="mask", dataset="samples-cifar10", clients=4,
                            partition="iid", rounds=2, local_batch=4, acnn_channels=5)
    metrics = result.results["metrics"]
    assert metrics["lr"] == ACNN_LR and len(metrics["history"]) == 2
    assert result.results["config"]["acnn_channels"] == 5
    dataset = load_dataset("samples-cifar10")
    rows, labels = pixel_dataset(dataset, dataset.test).numpy(), dataset.labels(dataset.test)
    assert result.model.score(rows, labels) == metrics["accuracy"]
    with pytest.raises(ConfigError, match="acnn_clip"):  # only the network's options apply to FedAvg
        RunConfig(algorithm="fedavg-cnn", cnn="acnn", acnn_clip=2.0).validate()
    with pytest.raises(ConfigError, match="acnn-slope"):
        algorithm("fedavg-cnn").configure(RunConfig(algorithm="fedavg-cnn", cnn="acnn", acnn_slope=0.0))
