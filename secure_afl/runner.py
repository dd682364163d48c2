"""The in-process federation: K clients, one server, a protocol between them, and the evaluation.

The runner follows the one data path of the design: features (cached) → public feature map →
each client's contribution → protocol rounds (the only thing that leaves a client) → the
server's solve → evaluation against the centralized solution on the pooled data. It talks to
protocols only through ``AggregationProtocol.aggregate``, so secure protocols slot in unchanged.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from protocols import Roster, RoundResult, broadcast_digest, make_protocol
from protocols.transcript import TranscriptWriter, check_destination, size_on_disk
from secure_afl.algorithms.afl import AFLClient, AFLConfig, AFLServer, ridge_solve, statistics_bound
from secure_afl.algorithms.apfl import APFLClient, APFLConfig
from secure_afl.algorithms.base import AlgorithmClient, AlgorithmServer, LinearModel, RoundSpec
from secure_afl.algorithms.deepafl import DeepAFLClient, DeepAFLConfig, DeepAFLServer
from secure_afl.algorithms.deepafl import centralized as deepafl_centralized
from secure_afl.algorithms.fedavg import DPConfig, FedAvgClient, FedAvgConfig, FedAvgServer
from secure_afl.class_minimum import withheld_summary, withhold_rare_classes
from secure_afl.config import ANALYTIC_DP, RunConfig
from secure_afl.data.datasets import Dataset, load_dataset
from secure_afl.data.partition import allocate_held_out, partition
from secure_afl.device import resolve_device
from secure_afl.errors import ConfigError
from secure_afl.features.backbone import load_backbone
from secure_afl.features.buffer import RandomBuffer
from secure_afl.features.cache import FeatureCache
from secure_afl.features.extract import cached_features
from secure_afl.features.feature_map import FeatureMap
from secure_afl.privacy import StatisticsPrivacy
from secure_afl.results import SCHEMA_VERSION, environment
from secure_afl.statistics import compute_statistics


log = logging.getLogger(__name__)


class PlaintextAggregationWarning(UserWarning):
    """The chosen protocol lets the server read every client's statistics."""


class ApproximateAggregationWarning(UserWarning):
    """The chosen protocol's sums are approximate, so the model is not exactly the centralized one."""


class SmallTestSplitWarning(UserWarning):
    """The test split has fewer samples than classes: its accuracy says next to nothing."""


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
    client_indices: list[np.ndarray]  # into train: the rows each client uses (all it holds but withheld classes)
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


def make_server(afl: AFLConfig, max_norm: float, dim: int, num_classes: int, max_samples: int, clients: list[int],
                deep: DeepAFLConfig | None = None, gradient: FedAvgConfig | None = None) -> AlgorithmServer:
    """The algorithm's server; the public bounds follow from the feature norm bound and the largest client size.
    APFL's server is AFL's (its primary stream is AFL)."""
    if gradient is not None:
        return FedAvgServer(dim, num_classes, gradient, clients, max_samples)
    if deep is not None:
        return DeepAFLServer(dim, num_classes, deep, max_samples, max_norm)
    return AFLServer(dim, num_classes, afl, statistics_bound(max_samples, max_norm))


def make_client(server: AlgorithmServer, client: int, x: torch.Tensor, y: np.ndarray, num_classes: int,
                afl: AFLConfig, max_norm: float, deep: DeepAFLConfig | None = None,
                gradient: FedAvgConfig | None = None, refine_x: torch.Tensor | None = None) -> AlgorithmClient:
    """Client ``client`` on its own mapped features (APFL's also on its refinement features); an AFL or APFL
    client clips its (noisy) vector to the bound of the server's round."""
    if gradient is not None:
        return FedAvgClient(client, x, y, num_classes, gradient, gradient.rounds)
    if deep is not None:
        return DeepAFLClient(x, y, num_classes, deep, max_norm)
    bound = server.next_round().bound
    if refine_x is None:
        return AFLClient(x, y, num_classes, afl.privacy, bound)
    return APFLClient(x, refine_x, y, num_classes, afl.privacy, bound)


def make_algorithm(afl: AFLConfig, max_norm: float, data: FederatedData, max_samples: int,
                   deep: DeepAFLConfig | None = None, gradient: FedAvgConfig | None = None):
    """The server and the clients of the whole federation. A client of an analytic algorithm that withholds
    every row (the minimum-count rule) has nothing to send and is not built."""
    ids = list(range(len(data.client_indices)))
    server = make_server(afl, max_norm, data.train_x.shape[1], data.num_classes, max_samples, ids, deep, gradient)
    refine = data.refine_train_x
    clients = {k: make_client(server, k, data.train_x[idx], data.train_y[idx], data.num_classes, afl, max_norm, deep,
                              gradient, None if refine is None else refine[idx])
               for k, idx in enumerate(data.client_indices) if len(idx) or gradient is not None}
    return server, clients


def federate(server: AlgorithmServer, clients: dict[int, AlgorithmClient], protocol, timer: Timer,
             observer=None, transcript: TranscriptWriter | None = None, progress: bool = False,
             expected_rounds: int | None = None) -> dict:
    """Every round in this process: the clients contribute, the protocol sums (``run_rounds`` says the rest)."""
    protocol.enrol(clients)  # every client of the job, before its first round (a no-op once enrolled)

    def exchange(spec: RoundSpec, asked: list[int]) -> RoundResult:
        with timer.phase("local"):
            vectors = {k: clients[k].contribute(spec) for k in asked}
        with timer.phase("aggregation"):
            return protocol.aggregate(spec.name, vectors, spec.bound, broadcast_digest=broadcast_digest(spec.broadcast))

    return run_rounds(server, sorted(clients), exchange, protocol.name, timer, observer, transcript, progress,
                      expected_rounds)


def run_rounds(server: AlgorithmServer, clients: list[int], exchange: Callable[[RoundSpec, list[int]], RoundResult],
               protocol_name: str, timer: Timer, observer=None, transcript: TranscriptWriter | None = None,
               progress: bool = False, expected_rounds: int | None = None) -> dict:
    """Drive every round: ``exchange(spec, asked)`` gets the asked clients' sum through the protocol (in this
    process, or over a deployment's network), the server consumes it. Returns byte counts.

    A round asks the clients its spec names (all by default), once: a round that fails is never
    retried and no statistic is aggregated twice, since two sums of one statistic over client sets
    that differ by one client give that client's vector away (the secure protocols' clients refuse
    a repeat anyway: protocols/ledger.py). Clients that drop out of a round are
    left out of every later round too (``included`` in the report), as a deployment would; the
    evaluation compares against centralized training on them. ``observer(spec, server)`` runs after
    each round (the runner records per-round accuracy of iterative algorithms with it). With a
    ``transcript`` (the protocol must record), each round's server view is written to disk as soon
    as the round ends, with the round's public spec and broadcast. With ``progress``, a bar counts the
    rounds (out of ``expected_rounds``) on stderr: a DeepAFL job or a CKKS sum runs for minutes.
    """
    from tqdm.auto import tqdm

    included = set(clients)
    upload = dict.fromkeys(clients, 0)
    download = dict.fromkeys(clients, 0)
    rounds = []
    with tqdm(total=expected_rounds, desc=f"rounds ({protocol_name})", unit="round", disable=not progress,
              leave=False, mininterval=0) as bar:  # rounds are coarse: show every one (tqdm skips updates < 0.1 s)
        while (spec := server.next_round()) is not None:
            asked = sorted(included if spec.participants is None else included & spec.participants)
            bar.set_postfix_str(spec.name)
            log.info("round %s: %d clients asked, %d values each", spec.name, len(asked), spec.length)
            result = exchange(spec, asked)
            if transcript is not None:
                with timer.phase("transcript"):
                    transcript.write_round(result.view, spec.public(), spec.broadcast)
            with timer.phase("solve"):
                server.receive(spec, result.total)
            for k in result.upload_bytes:
                upload[k] += result.upload_bytes[k]
                download[k] += result.download_bytes[k] + (spec.broadcast_bytes if k in asked else 0)
            if result.included is not None:
                included -= set(asked) - result.included
            if observer is not None:
                observer(spec, server)
            rounds.append({
                "round": spec.name,
                "length": spec.length,
                "upload_per_client_max": max(result.upload_bytes.values()),
                "download_per_client_max": max(result.download_bytes[k] + spec.broadcast_bytes for k in asked),
                "clients_asked": len(asked),
                "clients_included": len(included),
                "protocol": result.details,
            })
            bar.update()
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


# Fields of the configuration that decide which client holds which sample (the simulation's secret:
# with them and the data set anyone could rebuild every client's data), and fields that only describe
# the local machine. Neither is public knowledge, so neither enters a transcript.
PARTITION_FIELDS = ("seed", "partition", "alpha", "shards_per_client", "min_client_size")
LOCAL_FIELDS = ("data_dir", "download", "cache_dir", "use_cache", "device", "batch_size", "precision")


@dataclass
class RunPlan:
    """Everything fixed before the slow work: checked options, the protocol, who holds which sample."""

    config: RunConfig
    protocol: object
    dataset: Dataset
    train_y: np.ndarray
    test_y: np.ndarray
    client_indices: list[np.ndarray]  # what each client holds
    held_out: list[np.ndarray]
    sent_indices: list[np.ndarray]  # what each client uses: its holdings less the classes it withholds
    feature_map: FeatureMap
    refinement_map: FeatureMap | None
    device: torch.device


def plan_run(config: RunConfig, record: bool = False, roster: Roster | None = None) -> RunPlan:
    """Validate, build the protocol, open the data set and partition it: every cheap check that can
    refuse a run happens here, before features are extracted or anything is written. A deployed job's
    server passes the operator's ``roster``: the protocol adopts it (refusing one for another job) instead
    of enrolling identities of its own."""
    config.validate()
    algorithm_configs(config)  # refuses combinations only the algorithms' own configurations see
    feature_map = build_feature_map(config)
    refinement_map = build_refinement_map(config)
    protocol = make_protocol(config.protocol, record=record, **config.protocol_options())
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_dir, config.download)
    if not protocol.secure:
        warnings.warn(
            f"protocol {protocol.name!r}: the server sees every client's statistics in the clear",
            PlaintextAggregationWarning,
            stacklevel=3,
        )
    if not protocol.exact:
        warnings.warn(f"protocol {protocol.name!r}: sums are approximate", ApproximateAggregationWarning, stacklevel=3)
    train_y, test_y = dataset.labels(dataset.train), dataset.labels(dataset.test)
    if len(test_y) == 0:  # a class needs three images before a fifth of them rounds to one test image
        raise ConfigError(f"{dataset.name}: its {len(train_y)} images in {len(np.unique(train_y))} classes leave no "
                          "test split (no class has 3 images), so no accuracy can be measured; choose a data set with "
                          "more images per class")
    if len(test_y) < dataset.num_classes:
        warnings.warn(f"{dataset.name}: the test split holds {len(test_y)} images for {dataset.num_classes} classes, "
                      "fewer than one per class; its accuracy says next to nothing",
                      SmallTestSplitWarning, stacklevel=3)
    client_indices = partition(  # before the slow feature extraction, so an impossible split fails at once
        train_y, config.clients, config.partition, alpha=config.alpha,
        shards_per_client=config.shards_per_client, min_size=config.min_client_size, seed=config.seed,
    )
    held_out = allocate_held_out(client_indices, train_y, test_y, seed=config.seed)
    log.info("plan: %s, %d train / %d test images, %d clients (%s), protocol %s", dataset.name, len(train_y),
             len(test_y), len(client_indices), config.partition, protocol.name)
    sent = withhold_rare_classes(client_indices, train_y, config.min_class_count)
    _check_senders(sent, config)
    protocol.prepare(len(client_indices), statistics_bound(len(train_y), config.max_norm))
    if roster is None:
        protocol.enrol(range(len(client_indices)), job=public_config(config))  # the operator's roster for the job
    else:
        protocol.adopt(roster, range(len(client_indices)), job=public_config(config))
    return RunPlan(config, protocol, dataset, train_y, test_y, client_indices, held_out, sent, feature_map,
                   refinement_map, device)


def _check_senders(sent: list[np.ndarray], config: RunConfig) -> None:
    """Refuse, before any slow work, a minimum-count rule that leaves too few clients with rows to send."""
    senders = sum(len(rows) > 0 for rows in sent)
    needed = config.protocol_options().get("min_clients", 1)
    if senders < needed:
        raise ConfigError(f"--min-class-count {config.min_class_count} leaves {senders} of {len(sent)} clients with "
                          f"rows to send, fewer than the {needed} a sum must hold; lower it or use fewer clients")


@dataclass(frozen=True)
class Features:
    data: FederatedData
    train_raw: np.ndarray  # backbone features before the public map (float32)
    test_raw: np.ndarray
    info: dict
    rows_changed: float  # fraction of rows the norm bound changed


def load_features(plan: RunPlan, timer: Timer, progress: bool = False) -> Features:
    """Backbone features (cached) and the public feature maps, for the whole federation."""
    config, device = plan.config, plan.device
    log.info("features: %s on %s (%s, %d px)", config.backbone, device, config.dataset, config.resolution)
    with timer.phase("features"):
        train_raw, test_raw, info = backbone_features(config, plan.dataset, device, progress)
    with timer.phase("feature_map"):
        train_x, changed = plan.feature_map.apply(torch.from_numpy(train_raw).to(device))
        test_x, _ = plan.feature_map.apply(torch.from_numpy(test_raw).to(device))
        refine = [plan.refinement_map.apply(torch.from_numpy(raw).to(device))[0] for raw in (train_raw, test_raw)] \
            if plan.refinement_map else [None, None]
    data = FederatedData(train_x, plan.train_y, test_x, plan.test_y, plan.sent_indices, plan.held_out,
                         plan.dataset.num_classes, *refine)
    return Features(data, train_raw, test_raw, info, changed)


def public_config(config: RunConfig) -> dict:
    """The job's public configuration (γ, buffer and expansion seeds, backbone, algorithm and protocol
    options): never which client holds which sample, nor anything about the local machine. It goes into
    the roster every client holds, so its hash is bound into every secure round."""
    public = asdict(config)
    for name in PARTITION_FIELDS + LOCAL_FIELDS:
        public.pop(name)
    return public


def public_knowledge(plan: RunPlan, backbone_dim: int, feature_dim: int) -> dict:
    """What the server of this run legitimately knows besides the messages: the job's public
    configuration, the client ids, the feature and class dimensions, and the training-set size the
    bounds are built from. Never which client holds which sample."""
    return {
        "config": public_config(plan.config),
        "clients": list(range(len(plan.client_indices))),
        "num_classes": plan.dataset.num_classes,
        "backbone_dim": int(backbone_dim),
        "feature_dim": int(feature_dim),
        "train_size": len(plan.train_y),
        "secure_protocol": bool(plan.protocol.secure),
    }


def features_knowledge(plan: RunPlan, features: Features) -> dict:
    """``public_knowledge`` of a run whose features this process extracted."""
    return public_knowledge(plan, features.info["feature_dim"], features.data.train_x.shape[1])


@dataclass
class Training:
    server: AlgorithmServer
    clients: dict[int, AlgorithmClient]
    metrics: dict
    bytes: dict


def algorithm_configs(config: RunConfig):
    """(AFL, APFL or None, DeepAFL or None, FedAvg/FedProx or None) configurations of the run's algorithm."""
    return (AFLConfig(config.gamma, config.restore, statistics_privacy(config)),
            APFLConfig(config.lam, config.beta) if config.algorithm == "apfl" else None,
            deepafl_config(config) if config.algorithm == "deepafl" else None,
            fedavg_config(config) if config.algorithm in ("fedavg", "fedprox") else None)


def build_algorithm(plan: RunPlan, features: Features):
    """The run's algorithm server and clients on the federation's features."""
    afl, _, deep, gradient = algorithm_configs(plan.config)
    return make_algorithm(afl, plan.config.max_norm, features.data, len(plan.train_y), deep, gradient)


def train(plan: RunPlan, features: Features, timer: Timer, transcript: TranscriptWriter | None = None,
          protocol=None, progress: bool = False) -> Training:
    """The federation proper: clients, rounds through the protocol (``protocol`` replaces the plan's, e.g. a
    server that behaves differently), personalization and evaluation against the centralized reference."""
    config, data = plan.config, features.data
    protocol = protocol or plan.protocol
    afl_config, apfl_config, deep_config, gradient_config = algorithm_configs(config)
    with timer.phase("local"):
        server, clients = build_algorithm(plan, features)
    history = History(data, timer) if gradient_config is not None else None
    log.info("training: %s over %s, %d clients", config.algorithm, protocol.name, len(clients))
    bytes_report = federate(server, clients, protocol, timer, history, transcript, progress, expected_rounds(config))
    personal = None
    if apfl_config is not None:
        with timer.phase("personalization"):  # local only: nothing is sent
            personal = {k: client.personalize(server.model().weights, apfl_config) for k, client in clients.items()}
    with timer.phase("evaluation"):
        metrics = job_metrics(plan, features, server.model(), bytes_report["included_clients"], personal)
        if history is not None:
            metrics["history"] = history.rows
            metrics.update(gradient_report(clients, gradient_config))
    if afl_config.privacy is not None:
        metrics["dp"] = dp_report(server, clients, afl_config.privacy, features)
    if deep_config is not None:  # nonzero only when a declared bound was false (see algorithms/deepafl.py)
        metrics["values_clipped_to_bound"] = sum(client.clipped for client in clients.values())
    return Training(server, clients, metrics, bytes_report)


def job_metrics(plan: RunPlan, features: Features, model, included: list[int], personal: dict | None = None) -> dict:
    """The model's evaluation against the centralized reference on the included clients, and what the feature
    map and the minimum-count rule changed: the metrics of an in-process run and of a deployed one alike."""
    config, data = plan.config, features.data
    afl_config, _, deep_config, gradient_config = algorithm_configs(config)
    log.info("evaluation: %d test images", len(data.test_y))
    central = None if gradient_config else reference_model(data, included, afl_config, deep_config, config.max_norm)
    metrics = evaluate(model, central, data, included, personal)
    metrics["rows_changed_by_norm_bound"] = features.rows_changed
    if config.min_class_count > 1:
        metrics["min_class_count"] = withheld_summary(plan.client_indices, plan.sent_indices)
    return metrics


def results_document(plan: RunPlan, features: Features, training: Training, timer: Timer, **extra) -> dict:
    """The results JSON of a run (schema in results.py)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "config": asdict(plan.config),
        "metrics": training.metrics,
        "timings_s": timer.seconds,
        "bytes": training.bytes,
        "clients": {
            "train_sizes": [len(i) for i in plan.client_indices],
            "sent_sizes": [len(i) for i in plan.sent_indices],
            "held_out_sizes": [len(i) for i in plan.held_out],
        },
        "features": {**features.info, "dim": int(features.data.train_x.shape[1]), "train": len(plan.train_y),
                     "test": len(plan.test_y)},
        **extra,
        "environment": environment(plan.device, plan.config.seed),
    }


def run(config: RunConfig, progress: bool = False, transcript: str | None = None, overwrite: bool = False) -> dict:
    """Run one simulated federation and return the results document (see results.py). With ``transcript``,
    the server's view of every round is streamed to that path (see protocols/transcript.py)."""
    plan = plan_run(config, record=transcript is not None)
    if transcript is not None:
        check_destination(transcript, overwrite)
    timer = Timer()
    with timer.phase("total"):
        features = load_features(plan, timer, progress)
        writer = TranscriptWriter(transcript, features_knowledge(plan, features), overwrite) if transcript else None
        try:
            training = train(plan, features, timer, writer, progress=progress)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        extra = {}
        if writer is not None:
            with timer.phase("transcript"):
                path = writer.close()
            extra["transcript"] = {"path": str(path), "rounds": len(training.bytes["per_round"]),
                                   "bytes": size_on_disk(path)}
    return results_document(plan, features, training, timer, **extra)


def expected_rounds(config: RunConfig) -> int:
    """Aggregation rounds the job's algorithm asks for (fewer only if it stops early): the progress bar's total."""
    return {"deepafl": 2 * config.depth + 1, "fedavg": config.rounds, "fedprox": config.rounds}.get(config.algorithm, 1)


TRAINING_PHASES = ("local", "aggregation", "solve")  # building clients, the sums, the server's solves


def training_seconds(seconds: dict[str, float]) -> float:
    """Training time in a timer's phases: features, the reference and the evaluation are not training."""
    return sum(seconds.get(phase, 0.0) for phase in TRAINING_PHASES)


class History:
    """Per-round global test accuracy of an iterative algorithm, with the training time so far
    (evaluation time excluded), for time-to-accuracy comparisons."""

    def __init__(self, data: FederatedData, timer: Timer):
        self.rows: list[dict] = []
        self._test_x = data.test_x.cpu().numpy()
        self._test_y = data.test_y
        self._timer = timer

    def __call__(self, spec, server) -> None:
        spent = training_seconds(self._timer.seconds)
        self.rows.append({"round": len(self.rows) + 1, "clients": len(spec.participants or ()),
                          "accuracy": server.model().accuracy(self._test_x, self._test_y), "train_seconds": spent})


def gradient_report(clients: dict, config: FedAvgConfig) -> dict:
    report = {"parameters_clamped": sum(c.clamped for c in clients.values())}
    if config.dp is not None:
        report["dp"] = {
            "epsilon": max(c.epsilon() for c in clients.values()),
            "delta": config.dp.delta,
            "noise_multiplier": max(c.noise_multiplier for c in clients.values()),
            "clip": config.dp.clip,
            "accountant": config.dp.accountant,
            "noise_rng": "torch generator seeded from os.urandom per client and round (Opacus secure_mode unavailable)",
        }
    return report


def fedavg_config(config: RunConfig) -> FedAvgConfig:
    dp = None
    if config.dp_noise is not None or config.dp_epsilon is not None:
        dp = DPConfig(config.dp_clip, config.dp_noise, config.dp_epsilon, config.dp_delta, config.dp_accountant)
    return FedAvgConfig(config.rounds, config.local_epochs, config.lr, config.local_batch, config.client_fraction,
                        config.mu if config.algorithm == "fedprox" else 0.0, config.head, config.hidden,
                        config.param_bound, config.seed, dp)


def statistics_privacy(config: RunConfig) -> StatisticsPrivacy | None:
    """DP on AFL's / APFL's statistics when --dp-epsilon or --dp-noise asks for it (C is --max-norm; the
    distributed placement's t is the protocol's minimum aggregation size). Refuses a fixed-point precision
    too coarse to carry the noise: a share's σ must span at least 1000 encoding steps."""
    if config.algorithm not in ANALYTIC_DP or (config.dp_epsilon is None and config.dp_noise is None):
        return None
    placement = config.dp_placement or "local"
    t = config.protocol_options()["min_clients"] if placement == "distributed" else 1
    privacy = StatisticsPrivacy(config.dp_epsilon, config.dp_delta, config.max_norm, placement, t,
                                config.clients_per_round(), solve=config.dp_solve, noise=config.dp_noise)
    share = privacy.share_sigma  # calibrates z now: an ε no accountant can certify is refused before any work
    if config.fraction_bits is not None and share * 2.0**config.fraction_bits < 1000:
        raise ConfigError(f"--fraction-bits {config.fraction_bits} cannot resolve the DP noise (share σ {share:.3g}): "
                          "raise it or leave the default")
    return privacy


def dp_report(server: AFLServer, clients: dict, privacy: StatisticsPrivacy, features: Features) -> dict:
    """The results' ``dp`` block: the guarantee, and every row and entry the mechanism clipped."""
    rows = round(features.rows_changed * len(features.data.train_y))  # rows the feature map's norm bound changed
    report = privacy.report(rows, server.layout.length, sum(c.entries_clipped for c in clients.values()))
    report["rows_reclipped_float64"] = sum(c.rows_clipped for c in clients.values())
    return report


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
    the model that client uses (the global model, or its own under APFL; a client with nothing to send
    uses the global one). Gradient baselines have
    no closed-form centralized reference (``central`` None): those two metrics are null."""
    train_x = data.train_x.cpu().numpy()
    test_x = data.test_x.cpu().numpy()
    global_per_client = [model.accuracy(test_x[idx], data.test_y[idx]) for idx in data.held_out_indices]
    per_client = global_per_client
    if personal is not None:
        refine_x = data.refine_test_x.cpu().numpy()
        per_client = [personal[k].accuracy(test_x[idx], refine_x[idx], data.test_y[idx]) if k in personal
                      else global_per_client[k] for k, idx in enumerate(data.held_out_indices)]
    evaluated = [acc for acc in per_client if not np.isnan(acc)]
    global_evaluated = [acc for acc in global_per_client if not np.isnan(acc)]
    return {
        "accuracy": model.accuracy(test_x, data.test_y),
        "train_accuracy": model.accuracy(train_x, data.train_y),
        "centralized_accuracy": None if central is None else central.accuracy(test_x, data.test_y),
        "max_rel_diff_to_centralized": None if central is None else model.relative_difference(central),
        "personalized_accuracy": float(np.mean(evaluated)) if evaluated else None,
        "global_model_personalized_accuracy": float(np.mean(global_evaluated)) if global_evaluated else None,
        "per_client_accuracy": [None if np.isnan(a) else a for a in per_client],
        "clients_included": len(included),
        **({"layer_accuracy": model.layer_accuracy(test_x, data.test_y),
            "layer_train_accuracy": model.layer_accuracy(train_x, data.train_y)} if hasattr(model, "layer_accuracy") else {}),
    }
