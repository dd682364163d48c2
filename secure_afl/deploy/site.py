"""One site of a deployed job: its job file, its place in the roster, its own data, its ledger.

Everything a SuperNode knows comes from its operator, out of band, through ``--node-config``: the job
file (the run's configuration), the roster and the site's identity file (never from the server, which
could otherwise invent clients), the directory of its contribution ledger, and which partition of the
data set it holds (``partition-id`` of ``num-partitions``, as Flower's simulation engine sets them). The
site rebuilds only its own client: the runner's partition of the data set (the job's seed decides it, as
in the in-process run), its rows' backbone features from the on-disk feature cache, the public feature
map, and the algorithm's client (``secure_afl.runner.site_algorithm``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protocols import PROTOCOLS, ContributionLedger, Member, Roster
from protocols.files import write_atomically
from protocols.identity import Identity
from secure_afl.errors import ConfigError

if TYPE_CHECKING:
    from secure_afl.algorithms.base import AlgorithmClient, AlgorithmServer
    from secure_afl.config import RunConfig

JOB_FORMAT = "secure-afl/deploy-job"
JOB_VERSION = 1


def check_deployable(config: RunConfig) -> None:
    """Refuse, before any process starts, a job the deployment cannot run yet."""
    reason = undeployable(config)
    if reason is not None:
        raise ConfigError(f"--algorithm {config.algorithm} is not deployed yet: {reason}; run it in one process with "
                          "`secure-afl run`")
    leak = PROTOCOLS[config.protocol].leak
    if leak:
        raise ConfigError(f"--protocol {config.protocol} is not deployed: {leak}")
    if config.dropout:
        raise ConfigError("--dropout simulates dropouts in one process; a deployment's dropouts are real "
                          "(use --crash NODE=STAGE to stop a site's processes at a stage)")


def statistics_dp(config: RunConfig) -> bool:
    """Whether the job asks for DP on the statistics (secure_afl/privacy.py): its algorithm takes those options and
    DP is on. Each site adds its own noise before its vector is masked or encrypted, as the in-process client does."""
    from secure_afl.algorithms.afl import STATISTICS_DP_OPTIONS
    from secure_afl.algorithms.registry import algorithm

    private = config.dp_epsilon is not None or config.dp_noise is not None
    return private and set(STATISTICS_DP_OPTIONS) <= set(algorithm(config.algorithm).options)


@dataclass(frozen=True)
class FeatureSource:
    """What turns images into a job's rows: the backbone, its weights (``weights_id``: the weights file's SHA-256, so a
    site's copy of the file counts, wherever it keeps it) and the resolution. A site's rows file made by another
    source has rows of the same width whose model is silently wrong, so the rows carry their source and a site
    refuses rows whose source is not the job's. The precision is not part of it: a GPU's bf16 rows differ from a
    CPU's only by that rounding (README)."""

    backbone: str
    weights: str
    resolution: int

    @classmethod
    def of(cls, config: RunConfig) -> FeatureSource:
        """The source ``config`` extracts its features with (its weights file is hashed: torch and timm load)."""
        from secure_afl.features.backbone import weights_identity

        return cls(config.backbone, weights_identity(config.backbone, config.weights, config.random_weights,
                                                     config.seed), config.resolution)

    def check(self, made_by: FeatureSource, what: str, remedy: str) -> None:
        """Refuse rows (``what``) that ``made_by`` made unless this is that source, naming each difference."""
        differences = [f"{name} {getattr(made_by, name)!r} where the job has {getattr(self, name)!r}"
                       for name in ("backbone", "weights", "resolution") if getattr(made_by, name) != getattr(self, name)]
        if differences:
            raise ConfigError(f"{what}: {'; '.join(differences)}; {remedy}")


@dataclass(frozen=True)
class Task:
    """The task's public facts a site with its own rows (``dataset-path``) cannot count itself: the classes, the
    size of the whole training set (the public bounds are built from it), and the source its rows must come from."""

    num_classes: int
    train_size: int
    features: FeatureSource


def undeployable(config: RunConfig) -> str | None:
    """Why the job's algorithm (as the registry declares it) cannot run deployed yet, or None. A site answers each
    message in a fresh process and rebuilds its client from the job, its rows (through the public feature map and the
    algorithm's local one) and the calls of the rounds it answered (client_app.py), so any number of rounds on the
    public features deploys, and so does a personalized model a client builds from the global model alone
    (``Algorithm.personalize_client``: APFL); one built from more of the server's state (pFedACnnL's) does not."""
    from secure_afl.algorithms.registry import algorithm

    entry = algorithm(config.algorithm)
    if entry.inputs != "features":
        return f"its clients train on {entry.inputs}, a site serves mapped backbone features"
    if entry.personalize is not None and entry.personalize_client is None:
        return "its clients personalize from the server's state beyond the global model, which a site does not get"
    return None


def write_job(path: str | Path, config: RunConfig, task: Task | None = None) -> Path:
    """The job file every site and the server read: the whole run configuration and the task's public facts
    (JSON, never pickle)."""
    document = {"format": JOB_FORMAT, "version": JOB_VERSION, "config": asdict(config)}
    if task is not None:
        document["task"] = asdict(task)
    return write_atomically(path, lambda out: json.dump(document, out, indent=1))


def read_job(path: str | Path) -> RunConfig:
    from secure_afl.config import RunConfig

    document = _job_document(path)
    names = {f.name for f in fields(RunConfig)}
    options = document.get("config", {})
    if not isinstance(options, dict) or set(options) - names:
        raise ConfigError(f"the job file {str(path)!r} holds unknown options {sorted(set(options) - names)}")
    config = RunConfig(**options)
    config.validate()
    return config


def read_task(path: str | Path) -> Task:
    facts = _job_document(path).get("task")
    try:
        source = facts["features"]
        return Task(int(facts["num_classes"]), int(facts["train_size"]),
                    FeatureSource(str(source["backbone"]), str(source["weights"]), int(source["resolution"])))
    except (TypeError, KeyError, ValueError) as exc:
        raise ConfigError(f"the job file {str(path)!r} states no task (num_classes, train_size, features); issue it "
                          "again with `secure-afl deploy issue`") from exc


def _job_document(path: str | Path) -> dict:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the job file {str(path)!r}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != JOB_FORMAT or document.get("version") != JOB_VERSION:
        raise ConfigError(f"{str(path)!r} is not a secure-afl job file (format {JOB_FORMAT} version {JOB_VERSION})")
    return document


@dataclass(frozen=True)
class Site:
    """A SuperNode's operator-given facts. Reading them is cheap: a masking stage after the first needs only the
    identity and the ledger, so its process never imports torch or reads the job."""

    client: int
    partitions: int
    node_config: Mapping[str, object]

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> Site:
        node_config = simulated_site(node_config)
        missing = {"job", "partition-id", "num-partitions"} - set(node_config)
        if missing:
            raise ConfigError(f"the SuperNode's --node-config lacks {sorted(missing)}")
        client, count = int(node_config["partition-id"]), int(node_config["num-partitions"])
        if not 0 <= client < count:
            raise ConfigError(f"partition-id {client} is not one of num-partitions {count}")
        return cls(client, count, dict(node_config))

    def job(self) -> RunConfig:
        config = read_job(self._path("job"))
        if config.clients != self.partitions:
            raise ConfigError(f"num-partitions {self.partitions} does not match the job's {config.clients} clients")
        return config

    def _path(self, key: str) -> Path:
        if key not in self.node_config:
            raise ConfigError(f"this job needs {key}=PATH in the SuperNode's --node-config")
        return Path(str(self.node_config[key]))

    def roster(self) -> Roster:
        return Roster.load(self._path("roster"))

    def member(self) -> Member:
        """The site's identity, checked against the operator's roster; it must be the roster's entry for its partition."""
        roster = self.roster()
        identity = Identity.from_json(self._path("identity").read_text(), roster)
        if identity.client != self.client:
            raise ConfigError(f"the identity file is client {identity.client}'s, this site is partition {self.client}")
        return Member(identity, roster)

    def ledger(self) -> ContributionLedger:
        return ContributionLedger.in_directory(self._path("ledger-dir"), self.client)

    def features(self) -> SiteData:
        """This site's rows, mapped by the public feature map (and by the algorithm's local map: APFL's refinement
        stream, whose features never leave the site). With ``dataset-path`` in the node config: the site's own rows
        file (``secure-afl deploy rows``: its images' features and labels, made where the images are), so the node
        never loads the backbone; without it, the runner's partition of the shipped data set (the job's seed decides
        it, as in the in-process run) with backbone features from the on-disk cache (extracted on a miss). Either way
        the job's ``--min-class-count`` rule withholds the site's rare classes here."""
        from secure_afl.class_minimum import withhold_rare_classes

        config = self.job()
        rows = self._rows(config)
        (kept,) = withhold_rare_classes([np.arange(len(rows.labels))], rows.labels, config.min_class_count)
        x, refine_x = _mapped(config, rows.train[kept])
        return SiteData(x, rows.labels[kept], rows.num_classes, rows.train_size, rows.train.shape[1],
                        refine_x)

    def held_out(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The site's held-out rows (its own test split, never sent), mapped as its training rows: (features, local-map
        features or None, labels). Only a personalizing algorithm's last stage reads them."""
        config = self.job()
        rows = self._rows(config)
        return (*_mapped(config, rows.held_out), rows.held_out_labels)

    def _rows(self, config: RunConfig) -> _RawRows:
        from secure_afl.runner import backbone_features, plan_run

        if "dataset-path" in self.node_config:  # neither the data set nor the backbone is opened here
            task = read_task(self._path("job"))
            path = self._path("dataset-path")
            raw, labels = read_site_rows(path, task.num_classes, task.features)
            held, held_labels = read_held_out_rows(path, task.num_classes, raw.shape[1])
            return _RawRows(raw, labels, held, held_labels, task.num_classes, task.train_size)
        plan = plan_run(config, roster=None if config.protocol == "plaintext" else self.roster())
        train_raw, test_raw, _ = backbone_features(config, plan.dataset, plan.device, progress=False)
        rows, held = plan.client_indices[self.client], plan.held_out[self.client]
        return _RawRows(train_raw[rows], plan.train_y[rows], test_raw[held], plan.test_y[held],
                        plan.dataset.num_classes, len(plan.train_y))

    def rounds(self) -> int:
        """How many rounds the job asks of this site (the algorithm registry's count). It imports the algorithms,
        and with them torch, so only a stage that computes the site's vector asks."""
        from secure_afl.algorithms.registry import algorithm

        job = self.job()
        return algorithm(job.algorithm).rounds(job)

    def algorithm(self, data: SiteData, noise_key: bytes | None = None) -> tuple[AlgorithmServer, AlgorithmClient]:
        """The algorithm's server as this site derives it from the job (its rounds and public bounds, to check the
        server's calls against) and the site's client on its rows (``secure_afl.runner.site_algorithm``); under DP
        the client draws its noise under the site's ``noise_key`` (secure_afl/privacy.py)."""
        import torch

        from secure_afl.runner import site_algorithm

        config = self.job()
        refine_x = None if data.refine_x is None else torch.from_numpy(data.refine_x)
        server, client = site_algorithm(config, config.clients, data.x.shape[1], data.num_classes, data.train_size,
                                        self.client, torch.from_numpy(data.x), data.y, refine_x, noise_key)
        if client is None:
            raise ConfigError(f"client {self.client}: --min-class-count {config.min_class_count} withheld every row "
                              "of this site, so it has nothing to send")
        return server, client


@dataclass(frozen=True)
class _RawRows:
    """A site's backbone features before any map: its training rows and its held-out rows, with their labels, and the
    task's public counts."""

    train: np.ndarray
    labels: np.ndarray
    held_out: np.ndarray
    held_out_labels: np.ndarray
    num_classes: int
    train_size: int


def _mapped(config: RunConfig, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows through the job's public feature map and, if the algorithm has one, its local map (float32, numpy)."""
    import torch

    from secure_afl.device import resolve_device
    from secure_afl.runner import build_feature_map, build_local_map

    rows = torch.from_numpy(np.ascontiguousarray(raw)).to(resolve_device(config.device))
    local = build_local_map(config)
    x, _ = build_feature_map(config).apply(rows)
    return x.cpu().numpy(), None if local is None else local.apply(rows)[0].cpu().numpy()


SIMULATED_SITES = "SECURE_AFL_SIMULATED_SITES"  # environment: the directory of a simulation's node configs
NODE_CONFIG_FILE = "node-config.json"


def simulated_site(node_config: Mapping[str, object]) -> Mapping[str, object]:
    """A simulated node's whole node config. Flower's simulation engine gives each virtual node only
    ``partition-id`` and ``num-partitions``; the operator of a simulation (``secure-afl deploy simulate``) writes
    the rest of each site's entries (its files, as ``--node-config`` gives them to a SuperNode) to
    ``DIR/K/node-config.json`` and names DIR in the environment of the simulation's processes: out of band, never
    through the server. A node config that names its job (a real SuperNode's) is taken as it is."""
    directory = os.environ.get(SIMULATED_SITES)
    if directory is None or "job" in node_config or "partition-id" not in node_config:
        return node_config
    path = Path(directory) / str(node_config["partition-id"]) / NODE_CONFIG_FILE
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"simulated node {node_config['partition-id']}: cannot read its node config {str(path)!r}: "
                          f"{exc}") from exc
    given = {key: node_config.get(key) for key in ("partition-id", "num-partitions")}
    if not isinstance(entries, dict) or {key: entries.get(key) for key in given} != given:
        raise ConfigError(f"{str(path)!r} is not the node config of simulated node {given}")
    return entries


SITE_ROWS_FORMAT = "secure-afl/site-rows"
SITE_ROWS_VERSION = 2  # 2: the rows carry their FeatureSource


def write_site_rows(path: str | Path, source: FeatureSource, features: np.ndarray, labels: np.ndarray,
                    held_out_features: np.ndarray | None = None, held_out_labels: np.ndarray | None = None) -> Path:
    """A site's own rows for ``dataset-path``: the backbone features of its training images (float32, one row each)
    and their labels, in an npz with a format tag and the ``source`` that made them (no pickle). Optionally its
    held-out images' features and labels (``held_out_*``): a personalizing algorithm (APFL) evaluates the site's
    personalized model on them, at the site."""
    meta = np.frombuffer(json.dumps({"format": SITE_ROWS_FORMAT, "version": SITE_ROWS_VERSION,
                                     "features": asdict(source)}).encode(), np.uint8)
    arrays = {"format": meta, "features": np.asarray(features, np.float32), "labels": np.asarray(labels, np.int64)}
    if held_out_features is not None:
        arrays.update(held_out_features=np.asarray(held_out_features, np.float32),
                      held_out_labels=np.asarray(held_out_labels, np.int64))
    return write_atomically(path, lambda out: np.savez(out, **arrays), binary=True)


def read_site_rows(path: Path, num_classes: int, source: FeatureSource) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``write_site_rows`` wrote, refused unless they are that format, made by the job's ``source``, finite
    and labelled in the task's ``num_classes`` classes."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["format"].tobytes())
            features, labels = data["features"], data["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"dataset-path {str(path)!r} is not a site rows file ({SITE_ROWS_FORMAT}): {exc}") from exc
    if {key: meta.get(key) for key in ("format", "version")} != {"format": SITE_ROWS_FORMAT,
                                                                    "version": SITE_ROWS_VERSION}:
        raise ConfigError(f"dataset-path {str(path)!r} is {meta}, not {SITE_ROWS_FORMAT} version {SITE_ROWS_VERSION}: "
                          "make it again with `secure-afl deploy rows`")
    try:
        made_by = FeatureSource(**meta["features"])
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"dataset-path {str(path)!r} does not say what made its rows: {exc}") from exc
    source.check(made_by, f"the rows of dataset-path {str(path)!r} were made with",
                 "make them again for this job with `secure-afl deploy rows`")
    if (features.dtype != np.float32 or features.ndim != 2 or labels.shape != (features.shape[0],)
            or not np.isfinite(features).all() or (labels.size and not 0 <= labels.min() <= labels.max() < num_classes)):
        raise ConfigError(f"dataset-path {str(path)!r}: expected finite float32 features (rows, dim) and one label in "
                          f"0..{num_classes - 1} per row, got {features.dtype} {features.shape} and labels {labels.shape}")
    return features, labels


def read_held_out_rows(path: Path, num_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out rows of a rows file (none when it has none), refused unless finite float32 rows of the training
    rows' width ``dim``, labelled in the task's classes."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "held_out_features" not in data.files:
                return np.empty((0, dim), np.float32), np.empty(0, np.int64)
            features, labels = data["held_out_features"], data["held_out_labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"dataset-path {str(path)!r}: cannot read its held-out rows: {exc}") from exc
    if (features.dtype != np.float32 or features.shape[1:] != (dim,) or labels.shape != (features.shape[0],)
            or not np.isfinite(features).all() or (labels.size and not 0 <= labels.min() <= labels.max() < num_classes)):
        raise ConfigError(f"dataset-path {str(path)!r}: expected finite float32 held-out features (rows, {dim}) and one "
                          f"label in 0..{num_classes - 1} per row, got {features.dtype} {features.shape} and labels "
                          f"{labels.shape}")
    return features, labels


@dataclass(frozen=True)
class SiteData:
    """A site's mapped rows and the public facts a client is built from; kept in the node between messages."""

    x: np.ndarray  # float32 (rows, feature_dim)
    y: np.ndarray  # int64 labels
    num_classes: int
    train_size: int  # of the whole training set: the public bounds are built from it
    backbone_dim: int
    refine_x: np.ndarray | None = None  # float32: the algorithm's local-map features of the same rows (APFL's)
