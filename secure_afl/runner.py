"""The in-process federation: K clients, one server, a protocol between them, and the evaluation.

The runner follows the one data path of the design: features (cached) → public feature map →
each client's contribution → protocol rounds (the only thing that leaves a client) → the
server's solve → evaluation against the centralized solution on the pooled data. It talks to
protocols only through ``AggregationProtocol.aggregate``, so secure protocols slot in unchanged.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from protocols import Roster, RoundResult, broadcast_digest, make_protocol
from protocols.transcript import TranscriptWriter, check_destination, size_on_disk
from secure_afl.algorithms.afl import statistics_bound
from secure_afl.algorithms.base import AlgorithmClient, AlgorithmServer, RoundSpec
from secure_afl.algorithms.convnet import PIXELS, pixel_dataset
from secure_afl.algorithms.registry import algorithm
from secure_afl.class_minimum import withheld_summary, withhold_rare_classes
from secure_afl.config import RunConfig
from secure_afl.data.datasets import Dataset, load_dataset
from secure_afl.data.partition import allocate_held_out, partition
from secure_afl.device import resolve_device
from secure_afl.errors import ConfigError, TrainingWarning
from secure_afl.features.backbone import load_backbone
from secure_afl.features.buffer import RandomBuffer
from secure_afl.features.cache import FeatureCache
from secure_afl.features.extract import cached_features
from secure_afl.features.feature_map import FeatureMap
from secure_afl.privacy import with_noise_key
from secure_afl.results import SCHEMA_VERSION, environment


log = logging.getLogger(__name__)


class PlaintextAggregationWarning(UserWarning):
    """The chosen protocol lets the server read every client's statistics."""


class ApproximateAggregationWarning(UserWarning):
    """The chosen protocol's sums are approximate, so the model is not exactly the centralized one."""


class ProtocolLeakWarning(UserWarning):
    """The chosen protocol hides each client's input from the server only in name (``AggregationProtocol.leak``)."""


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


def build_local_map(config: RunConfig) -> FeatureMap | None:
    """The algorithm's second public map, whose features never leave a client (APFL's refinement stream)."""
    local_map = algorithm(config.algorithm).local_map
    return None if local_map is None else local_map(config)


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
    key_holders = set()  # HE: clients that also create the keys and decrypt (they upload far more)
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
            if "key_holder" in result.details:
                key_holders.add(result.details["key_holder"])
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
        "upload_max_by_role": upload_by_role(upload, key_holders),
        "per_client_download_max": max(download.values()),
        "per_client_download_mean": float(np.mean(list(download.values()))),
        "server_received_total": sum(upload.values()),
        "server_sent_total": sum(download.values()),
        "model_broadcast": model_bytes,
        "per_round": rounds,
        "included_clients": sorted(included),
    }


def upload_by_role(upload: dict[int, int], key_holders: set[int]) -> dict[str, int]:
    """The largest upload of a plain client and, under HE, of the key holder (context and decryptions)."""
    roles = {"client": [b for k, b in upload.items() if k not in key_holders],
             "key holder": [b for k, b in upload.items() if k in key_holders]}
    return {role: max(sizes) for role, sizes in roles.items() if sizes}


# Fields of the configuration that decide which client holds which sample (the simulation's secret:
# with them and the data set anyone could rebuild every client's data), and fields that only describe
# the local machine or the simulation's own evaluation. Neither is public knowledge, so neither enters a transcript.
PARTITION_FIELDS = ("seed", "partition", "alpha", "shards_per_client", "min_client_size")
LOCAL_FIELDS = ("data_dir", "download", "cache_dir", "use_cache", "device", "batch_size", "precision",
                "centralized_reference")


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
    algorithm(config.algorithm).configure(config)  # refuses combinations only the algorithm's own configuration sees
    feature_map = build_feature_map(config)
    refinement_map = build_local_map(config)
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
    if protocol.leak:
        warnings.warn(f"protocol {protocol.name!r}: {protocol.leak}", ProtocolLeakWarning, stacklevel=3)
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
    """Backbone features (cached) and the public feature maps, for the whole federation; for an algorithm
    trained end to end on pixels, the normalised 32 px pixel rows instead (no backbone, no map)."""
    config, device = plan.config, plan.device
    if algorithm(config.algorithm).inputs == "pixels":
        with timer.phase("features"):
            train_x, test_x = (pixel_dataset(plan.dataset, split) for split in (plan.dataset.train, plan.dataset.test))
        data = FederatedData(train_x, plan.train_y, test_x, plan.test_y, plan.sent_indices, plan.held_out,
                             plan.dataset.num_classes)
        info = {"pools": len(plan.dataset.pools), "cache_hits": 0, "feature_dim": PIXELS}
        return Features(data, train_x.numpy(), test_x.numpy(), info, 0.0)
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


def build_algorithm(plan: RunPlan, features: Features):
    """The run's algorithm server and clients on the federation's features."""
    entry = algorithm(plan.config.algorithm)
    return entry.build(entry.configure(plan.config), features.data, len(plan.train_y), plan.config.max_norm)


def site_algorithm(config: RunConfig, clients: int, dim: int, num_classes: int, max_samples: int,
                   client: int | None = None, x: torch.Tensor | None = None, y: np.ndarray | None = None,
                   refine_x: torch.Tensor | None = None, noise_key: bytes | None = None
                   ) -> tuple[AlgorithmServer, AlgorithmClient | None]:
    """The algorithm's server and one site's client as a deployment's processes build them: the registry's
    ``build`` on the federation as that process sees it, the site's own rows ``x``, ``y`` (and their local-map
    features ``refine_x``, APFL's) under its index ``client`` and every other client without rows (the deployed
    server holds none, ``client`` None). ``noise_key``: the site's secret key for DP noise (privacy.py), so each of
    its processes draws the same release. The client is None for the server, and for a site the minimum-count rule
    left with nothing to send."""
    x = torch.empty((0, dim)) if x is None else x
    y = np.empty(0, dtype=np.int64) if y is None else y
    none = np.empty(0, dtype=np.int64)
    indices = [none] * clients
    if client is not None:
        indices[client] = np.arange(len(y))
    refine = None if refine_x is None else (refine_x, refine_x[:0])
    view = FederatedData(x, y, x[:0], y[:0], indices, [none] * clients, num_classes, *(refine or ()))
    entry = algorithm(config.algorithm)
    job = entry.configure(config)
    if noise_key is not None:
        job = with_noise_key(job, noise_key)
    server, built = entry.build(job, view, max_samples, config.max_norm)
    return server, built.get(client)


def train(plan: RunPlan, features: Features, timer: Timer, transcript: TranscriptWriter | None = None,
          protocol=None, progress: bool = False) -> Training:
    """The federation proper: clients, rounds through the protocol (``protocol`` replaces the plan's, e.g. a
    server that behaves differently), local post-processing and evaluation against the centralized reference."""
    config, data = plan.config, features.data
    protocol = protocol or plan.protocol
    entry = algorithm(config.algorithm)
    job = entry.configure(config)
    with timer.phase("local"):
        server, clients = entry.build(job, data, len(plan.train_y), config.max_norm)
    history = History(data, timer) if entry.history else None
    log.info("training: %s over %s, %d clients", config.algorithm, protocol.name, len(clients))
    bytes_report = federate(server, clients, protocol, timer, history, transcript, progress, entry.rounds(config))
    personal = None
    if entry.personalize is not None:
        with timer.phase("personalization"):  # local only: nothing is sent
            personal = entry.personalize(job, server, clients)
    with timer.phase("evaluation"):
        metrics = job_metrics(plan, features, job, server.model(), bytes_report["included_clients"], personal)
        if history is not None:
            metrics["history"] = history.rows
    if entry.report is not None:
        metrics.update(entry.report(job, server, clients, features))
    return Training(server, clients, metrics, bytes_report)


def job_metrics(plan: RunPlan, features: Features, job, model, included: list[int],
                personal: dict | None = None, personal_accuracy: dict[int, float] | None = None) -> dict:
    """The model's evaluation against the centralized reference on the included clients (warning when it is at
    chance), and what the feature map and the minimum-count rule changed: the metrics of an in-process run and of
    a deployed one alike. ``job`` is the algorithm's configuration (``Algorithm.configure``); ``personal`` the
    clients' personalized models (in one process) or ``personal_accuracy`` their own evaluations (a deployed job's
    sites: ``evaluate``)."""
    config, data = plan.config, features.data
    entry = algorithm(config.algorithm)
    log.info("evaluation: %d test images", len(data.test_y))
    central = None
    if entry.reference is not None and config.centralized_reference:
        pooled = np.concatenate([data.client_indices[k] for k in included])
        central = entry.reference(job, data.train_x[pooled], data.train_y[pooled], data.num_classes, config.max_norm)
    metrics = evaluate(model, central, data, included, personal, personal_accuracy)
    metrics["centralized_reference"] = ("computed" if central is not None else "none: the algorithm has no "
                                        "closed-form centralized solution" if entry.reference is None
                                        else "skipped (--no-centralized-reference)")
    warn_if_chance(metrics, data, config, job)
    metrics["rows_changed_by_norm_bound"] = features.rows_changed
    if config.min_class_count > 1:
        metrics["min_class_count"] = withheld_summary(plan.client_indices, plan.sent_indices)
    return metrics


def results_document(plan: RunPlan, features: Features, training: Training, timer: Timer, **extra) -> dict:
    """The results JSON of a run (schema in results.py)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "config": plan.config.applicable(),
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


@dataclass(frozen=True)
class CompletedRun:
    """A finished run: its results document and its trained model (``server.model()``), with the plan that
    says how the model's inputs were made (backbone, feature map) for secure_afl/model.py."""

    document: dict
    model: object
    plan: RunPlan
    feature_dim: int  # the backbone's output width


def complete_run(config: RunConfig, progress: bool = False, transcript: str | None = None,
                 overwrite: bool = False) -> CompletedRun:
    """Run one simulated federation. With ``transcript``, the server's view of every round is streamed to that
    path (see protocols/transcript.py)."""
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
    document = results_document(plan, features, training, timer, **extra)
    return CompletedRun(document, training.server.model(), plan, int(features.info["feature_dim"]))


def run(config: RunConfig, progress: bool = False, transcript: str | None = None, overwrite: bool = False) -> dict:
    """Run one simulated federation and return the results document (see results.py); ``complete_run`` also
    returns the model."""
    return complete_run(config, progress, transcript, overwrite).document


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


def warn_if_chance(metrics: dict, data: FederatedData, config: RunConfig, job) -> None:
    """A model within noise of chance usually means a setting, not the data: say which one likely."""
    labels = np.asarray(data.test_y)
    if len(labels) == 0 or metrics["accuracy"] is None:
        return
    chance = np.bincount(labels).max() / len(labels)  # always guessing the most frequent test class
    if metrics["accuracy"] > chance + 3.0 * math.sqrt(chance * (1.0 - chance) / len(labels)):
        return
    private = config.dp_epsilon is not None or config.dp_noise is not None
    if getattr(job, "lr", None) is not None:  # a gradient method
        cause = f"the learning rate {job.lr:g} (--lr)" + (" or the DP-SGD noise (--dp-epsilon)" if private else "")
    elif private:
        cause = "the DP noise on the statistics (raise --dp-epsilon)"
    else:
        cause = "the features (--backbone, --resolution) or too little data per class"
    warnings.warn(f"final accuracy {metrics['accuracy']:.3f} is within noise of chance ({chance:.3f}, the most "
                  f"frequent test class, n = {len(labels)}); the likely cause is {cause}", TrainingWarning, stacklevel=2)


def evaluate(model, central, data: FederatedData, included: list[int], personal: dict | None = None,
             personal_accuracy: dict[int, float] | None = None) -> dict:
    """Global accuracy, the centralized reference on the included clients' pooled data, and the paper's
    personalized metric: the mean over clients of the accuracy, on each client's held-out split, of
    the model that client uses (the global model, or its own under APFL; a client with nothing to send
    uses the global one). A deployed job's personalized models stay at their sites, which report their
    accuracies instead (``personal_accuracy``: NaN where a site withheld it or did not answer). Algorithms
    without a closed-form centralized reference, and runs that skip it (``central`` None), have those two
    metrics null. Each split goes through the model once (a layered model predicts every layer in that
    pass); the per-client figures are read off the test split's predictions."""
    train_x = data.train_x.cpu().numpy()
    test_x = data.test_x.cpu().numpy()
    test_layers, train_layers = _layer_predictions(model, test_x), _layer_predictions(model, train_x)
    predicted = test_layers[-1]
    global_per_client = [_accuracy(predicted[idx], data.test_y[idx]) for idx in data.held_out_indices]
    per_client = global_per_client
    if personal is not None:
        refine_x = None if data.refine_test_x is None else data.refine_test_x.cpu().numpy()  # APFL's second stream

        def inputs(idx):  # what a personalized model predicts from: the features, and APFL's refinement features
            return (test_x[idx],) if refine_x is None else (test_x[idx], refine_x[idx])

        personal_accuracy = {k: personal[k].accuracy(*inputs(data.held_out_indices[k]),
                                                     data.test_y[data.held_out_indices[k]]) for k in personal}
    if personal_accuracy is not None:
        per_client = [personal_accuracy.get(k, global_per_client[k]) for k in range(len(data.held_out_indices))]
    evaluated = [acc for acc in per_client if not np.isnan(acc)]
    global_evaluated = [acc for acc in global_per_client if not np.isnan(acc)]
    return {
        "accuracy": _accuracy(predicted, data.test_y),
        "train_accuracy": _accuracy(train_layers[-1], data.train_y),
        "centralized_accuracy": None if central is None else central.accuracy(test_x, data.test_y),
        "max_rel_diff_to_centralized": None if central is None else model.relative_difference(central),
        "personalized_accuracy": float(np.mean(evaluated)) if evaluated else None,
        "global_model_personalized_accuracy": float(np.mean(global_evaluated)) if global_evaluated else None,
        "per_client_accuracy": [None if np.isnan(a) else a for a in per_client],
        "clients_included": len(included),
        **({"layer_accuracy": [_accuracy(p, data.test_y) for p in test_layers],
            "layer_train_accuracy": [_accuracy(p, data.train_y) for p in train_layers]}
           if hasattr(model, "layer_predictions") else {}),
    }


def _layer_predictions(model, x: np.ndarray) -> list[np.ndarray]:
    """Predicted classes after every layer of a layered model, or the one prediction of any other."""
    return model.layer_predictions(x) if hasattr(model, "layer_predictions") else [model.predict(x)]


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == np.asarray(labels))) if len(labels) else float("nan")
