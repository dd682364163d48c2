"""The in-process federation: K clients, one server, a protocol between them, and the evaluation.

The runner follows the one data path of the design: features (cached) → public feature map →
each client's contribution → protocol rounds (the only thing that leaves a client) → the
server's solve → evaluation against the centralized solution on the pooled data. It talks to
protocols only through ``AggregationProtocol.aggregate``, so secure protocols slot in unchanged.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from protocols import make_protocol
from secure_afl.algorithms.afl import AFLClient, AFLConfig, AFLServer, ridge_solve, statistics_bound
from secure_afl.algorithms.apfl import APFLClient, APFLConfig
from secure_afl.algorithms.base import AlgorithmClient, AlgorithmServer, LinearModel
from secure_afl.algorithms.deepafl import DeepAFLClient, DeepAFLConfig, DeepAFLServer
from secure_afl.algorithms.deepafl import centralized as deepafl_centralized
from secure_afl.config import RunConfig
from secure_afl.data.datasets import Dataset, load_dataset
from secure_afl.data.partition import allocate_held_out, partition
from secure_afl.device import resolve_device
from secure_afl.features.backbone import load_backbone
from secure_afl.features.buffer import RandomBuffer
from secure_afl.features.cache import FeatureCache
from secure_afl.features.extract import cached_features
from secure_afl.features.feature_map import FeatureMap
from secure_afl.results import SCHEMA_VERSION, environment
from secure_afl.statistics import compute_statistics


class PlaintextAggregationWarning(UserWarning):
    """The chosen protocol lets the server read every client's statistics."""


class ApproximateAggregationWarning(UserWarning):
    """The chosen protocol's sums are approximate, so the model is not exactly the centralized one."""


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class FederatedData:
    """Mapped features of the whole federation (float32, on the run's device) and who holds what."""

    train_x: torch.Tensor
    train_y: np.ndarray
    test_x: torch.Tensor
    test_y: np.ndarray
    client_indices: list[np.ndarray]  # into train
    held_out_indices: list[np.ndarray]  # into test
    num_classes: int
    refine_train_x: torch.Tensor | None = None  # APFL's refinement-stream features; never leave a client
    refine_test_x: torch.Tensor | None = None


def build_feature_map(config: RunConfig) -> FeatureMap:
    buffer = None
    if config.buffer_width > 0:
        buffer = RandomBuffer(config.buffer_width, config.buffer_activation, config.buffer_seed, config.buffer_bias)
    return FeatureMap(buffer, config.feature_norm, config.max_norm)


def build_refinement_map(config: RunConfig) -> FeatureMap | None:
    """APFL's second public map (its own seed and activation); None for the other algorithms."""
    if config.algorithm != "apfl":
        return None
    buffer = RandomBuffer(config.refine_width, config.refine_activation, config.refine_seed)
    return FeatureMap(buffer, config.feature_norm, config.max_norm)


def backbone_features(config: RunConfig, dataset: Dataset, device: torch.device, progress: bool):
    """Backbone features of the train and test splits, plus how many pools came from the cache."""
    backbone = load_backbone(config.backbone, config.weights, config.random_weights, seed=config.seed)
    cache = FeatureCache(config.cache_dir) if config.use_cache else None
    per_pool, hits = {}, 0
    for pool, source in dataset.pools.items():
        per_pool[pool], hit = cached_features(
            backbone, source, dataset=dataset.name, pool=pool, resolution=config.resolution,
            batch_size=config.batch_size, device=device, cache=cache, progress=progress, precision=config.precision,
        )
        hits += hit
    train = per_pool[dataset.train.pool][dataset.train.indices]
    test = per_pool[dataset.test.pool][dataset.test.indices]
    return train, test, {"pools": len(per_pool), "cache_hits": hits, "feature_dim": backbone.feature_dim}


def make_algorithm(afl: AFLConfig, max_norm: float, data: FederatedData, max_samples: int,
                   deep: DeepAFLConfig | None = None):
    """The server and the clients; the public bounds follow from the feature norm bound and client size.

    APFL's server is AFL's (its primary stream is AFL); its clients also hold refinement features.
    """
    dim = data.train_x.shape[1]
    if deep is not None:
        server = DeepAFLServer(dim, data.num_classes, deep, max_samples, max_norm)
        clients = {k: DeepAFLClient(data.train_x[idx], data.train_y[idx], data.num_classes, deep)
                   for k, idx in enumerate(data.client_indices)}
        return server, clients
    server = AFLServer(dim, data.num_classes, afl, statistics_bound(max_samples, max_norm))
    if data.refine_train_x is None:
        clients = {k: AFLClient(data.train_x[idx], data.train_y[idx], data.num_classes)
                   for k, idx in enumerate(data.client_indices)}
    else:
        clients = {k: APFLClient(data.train_x[idx], data.refine_train_x[idx], data.train_y[idx], data.num_classes)
                   for k, idx in enumerate(data.client_indices)}
    return server, clients


def federate(server: AlgorithmServer, clients: dict[int, AlgorithmClient], protocol, timer: Timer) -> dict:
    """Drive every round: clients contribute, the protocol sums, the server consumes. Returns byte counts.

    Clients that drop out of a round are left out of every later round too (``included`` in the
    report), as a deployment would; the evaluation compares against centralized training on them.
    """
    included = set(clients)
    upload = dict.fromkeys(clients, 0)
    download = dict.fromkeys(clients, 0)
    rounds = []
    while (spec := server.next_round()) is not None:
        with timer.phase("local"):
            vectors = {k: clients[k].contribute(spec) for k in sorted(included)}
        with timer.phase("aggregation"):
            result = protocol.aggregate(spec.name, vectors, spec.bound)
        with timer.phase("solve"):
            server.receive(spec, result.total)
        for k in vectors:
            upload[k] += result.upload_bytes[k]
            download[k] += result.download_bytes[k] + spec.broadcast_bytes
        if result.included is not None:
            included &= result.included
        rounds.append({
            "round": spec.name,
            "length": spec.length,
            "upload_per_client_max": max(result.upload_bytes.values()),
            "download_per_client_max": max(result.download_bytes[k] + spec.broadcast_bytes for k in vectors),
            "clients_included": len(included),
            "protocol": result.details,
        })
    model_bytes = int(server.model().weights.nbytes)  # the final model is broadcast to every client
    for k in clients:
        download[k] += model_bytes
    return {
        "per_client_upload_max": max(upload.values()),
        "per_client_upload_mean": float(np.mean(list(upload.values()))),
        "per_client_download_max": max(download.values()),
        "per_client_download_mean": float(np.mean(list(download.values()))),
        "server_received_total": sum(upload.values()),
        "server_sent_total": sum(download.values()),
        "model_broadcast": model_bytes,
        "per_round": rounds,
        "included_clients": sorted(included),
    }


def run(config: RunConfig, progress: bool = False) -> dict:
    """Run one simulated federation and return the results document (see results.py)."""
    config.validate()
    afl_config = AFLConfig(config.gamma, config.restore)
    apfl_config = APFLConfig(config.lam, config.beta) if config.algorithm == "apfl" else None
    deep_config = deepafl_config(config) if config.algorithm == "deepafl" else None
    feature_map = build_feature_map(config)
    refinement_map = build_refinement_map(config)
    protocol = make_protocol(config.protocol, **config.protocol_options())
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_dir, config.download)
    if not protocol.secure:
        warnings.warn(
            f"protocol {protocol.name!r}: the server sees every client's statistics in the clear",
            PlaintextAggregationWarning,
            stacklevel=2,
        )
    if not protocol.exact:
        warnings.warn(f"protocol {protocol.name!r}: sums are approximate", ApproximateAggregationWarning, stacklevel=2)
    train_y, test_y = dataset.labels(dataset.train), dataset.labels(dataset.test)
    client_indices = partition(  # before the slow feature extraction, so an impossible split fails at once
        train_y, config.clients, config.partition, alpha=config.alpha,
        shards_per_client=config.shards_per_client, min_size=config.min_client_size, seed=config.seed,
    )
    held_out = allocate_held_out(client_indices, train_y, test_y, seed=config.seed)
    protocol.prepare(len(client_indices), statistics_bound(len(train_y), config.max_norm))
    timer = Timer()
    with timer.phase("total"):
        with timer.phase("features"):
            train_raw, test_raw, feature_info = backbone_features(config, dataset, device, progress)
        with timer.phase("feature_map"):
            train_x, changed = feature_map.apply(torch.from_numpy(train_raw).to(device))
            test_x, _ = feature_map.apply(torch.from_numpy(test_raw).to(device))
            refine = [refinement_map.apply(torch.from_numpy(raw).to(device))[0] for raw in (train_raw, test_raw)] \
                if refinement_map else [None, None]
        data = FederatedData(train_x, train_y, test_x, test_y, client_indices, held_out, dataset.num_classes, *refine)
        with timer.phase("local"):
            server, clients = make_algorithm(afl_config, config.max_norm, data, len(train_y), deep_config)
        bytes_report = federate(server, clients, protocol, timer)
        personal = None
        if apfl_config is not None:
            with timer.phase("personalization"):  # local only: nothing is sent
                personal = {k: client.personalize(server.model().weights, apfl_config) for k, client in clients.items()}
        with timer.phase("evaluation"):
            included = bytes_report["included_clients"]
            central = reference_model(data, included, afl_config, deep_config, config.max_norm)
            metrics = evaluate(server.model(), central, data, included, personal)
    metrics["rows_changed_by_norm_bound"] = changed
    return {
        "schema_version": SCHEMA_VERSION,
        "config": asdict(config),
        "metrics": metrics,
        "timings_s": timer.seconds,
        "bytes": bytes_report,
        "clients": {
            "train_sizes": [len(i) for i in client_indices],
            "held_out_sizes": [len(i) for i in held_out],
        },
        "features": {**feature_info, "dim": int(train_x.shape[1]), "train": len(train_y), "test": len(test_y)},
        "environment": environment(device, config.seed),
    }


def deepafl_config(config: RunConfig) -> DeepAFLConfig:
    return DeepAFLConfig(config.deep_width, config.residual_width, config.depth, config.deep_lam, config.deep_gamma,
                         config.deep_activation, config.deep_seed)


def reference_model(data: FederatedData, included: list[int], afl_config: AFLConfig,
                    deep_config: DeepAFLConfig | None, max_norm: float):
    """The same algorithm trained centrally on the included clients' pooled data."""
    pooled = np.concatenate([data.client_indices[k] for k in included])
    x, y = data.train_x[pooled], data.train_y[pooled]
    if deep_config is not None:
        return deepafl_centralized(x, y, data.num_classes, deep_config, max_norm)
    return LinearModel(ridge_solve(compute_statistics(x, y, data.num_classes), afl_config))


def evaluate(model, central, data: FederatedData, included: list[int], personal: dict | None = None) -> dict:
    """Global accuracy, the centralized reference on the included clients' pooled data, and the paper's
    personalized metric: the mean over clients of the accuracy, on each client's held-out split, of
    the model that client uses (the global model, or its own under APFL)."""
    train_x = data.train_x.cpu().numpy()
    test_x = data.test_x.cpu().numpy()
    central_model = central
    global_per_client = [model.accuracy(test_x[idx], data.test_y[idx]) for idx in data.held_out_indices]
    per_client = global_per_client
    if personal is not None:
        refine_x = data.refine_test_x.cpu().numpy()
        per_client = [personal[k].accuracy(test_x[idx], refine_x[idx], data.test_y[idx])
                      for k, idx in enumerate(data.held_out_indices)]
    evaluated = [acc for acc in per_client if not np.isnan(acc)]
    global_evaluated = [acc for acc in global_per_client if not np.isnan(acc)]
    return {
        "accuracy": model.accuracy(test_x, data.test_y),
        "train_accuracy": model.accuracy(train_x, data.train_y),
        "centralized_accuracy": central_model.accuracy(test_x, data.test_y),
        "max_rel_diff_to_centralized": model.relative_difference(central),
        "personalized_accuracy": float(np.mean(evaluated)) if evaluated else None,
        "global_model_personalized_accuracy": float(np.mean(global_evaluated)) if global_evaluated else None,
        "per_client_accuracy": [None if np.isnan(a) else a for a in per_client],
        "clients_included": len(included),
        **({"layer_accuracy": model.layer_accuracy(test_x, data.test_y),
            "layer_train_accuracy": model.layer_accuracy(train_x, data.train_y)} if hasattr(model, "layer_accuracy") else {}),
    }
