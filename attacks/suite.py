"""Running attacks end to end: build the case (or load a saved transcript), attack it, score it.

This is the one entry point the CLI, tests and benchmarks share. The difference attack needs a
server that aggregates a statistic twice, so when it is asked for on a fresh case it gets its own
``retry`` case; every other attack runs on the honest case. Under a secure protocol the clients
refuse the retry (their contribution ledgers, protocols/ledger.py): the attack's report then says
it was defended and lists each typed refusal; ``defended=False`` runs the clients without the
ledger, to show what the defence stops. A saved transcript is scored when the
machine has the data: the ground truth is rebuilt from the transcript's public configuration plus
the partition options given here, and refused unless it reproduces the transcript's sums. The
membership attack scores candidate records rather than reconstructing anything, so its own
evaluator (attacks/membership/evaluation.py) draws the candidates from the ground truth, runs it
and scores its ROC; without ground truth it has nothing to ask about. The ``invert`` attack turns
recovered features into images: it is handed the public knowledge it needs (the job's backbone and
the data set's test split, which no client holds) and scored by the image evaluator
(attacks/inversion/evaluation.py). It trains a decoder, so ``all`` leaves it out: ask for it by name.
Where no job can run (a data set that leaves no test split), ``oracle_optimisation`` still measures the
image stage alone: the true features inverted through the backbone, scored by the same evaluator.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from attacks.base import ATTACKS, ServerView
from attacks.case import Case, GroundTruth
from attacks.evaluation import evaluate
from attacks.gradient.evaluation import evaluate_inversion as evaluate_gradient_inversion
from attacks.gradient.evaluation import inversion_picture
from attacks.gradient.inversion import GradientInversion
from attacks.grid import save_grid
from attacks.inversion.attack import ORACLE, InvertAttack, SourceFeature
from attacks.inversion.decoder import DecoderSettings
from attacks.inversion.evaluation import evaluate_inversion as evaluate_feature_inversion
from attacks.inversion.evaluation import evaluate_oracle_images
from attacks.inversion.knowledge import Encoder, Knowledge, PublicImages, channels
from attacks.inversion.optimise import OptimiseSettings, optimise_images
from attacks.inversion.statistics_matching import MatchSettings, MatchStatistics
from attacks.membership.attack import MembershipAttack
from attacks.membership.evaluation import evaluate_membership
from attacks.membership.plot import save_roc
from protocols.transcript import Transcript
from secure_afl.config import RunConfig
from secure_afl.data.datasets import Dataset, load_dataset
from secure_afl.device import resolve_device
from secure_afl.errors import ConfigError
from secure_afl.features.backbone import load_backbone
from secure_afl.features.cache import default_cache_dir
from secure_afl.results import SCHEMA_VERSION, environment
from secure_afl.runner import LOCAL_FIELDS, PARTITION_FIELDS, backbone_features

# target kinds with a picture: single images, or ROC curves
PICTURED = ("singletons", "samples", "batches", "small-clients", "membership")
NOT_IN_ALL = ("invert", "match-statistics")  # train a decoder or optimise images (minutes on a CPU): asked for by name
DECODE_CAP = 64  # largest side decoded: image files are read at their own size up to this


@dataclass(frozen=True)
class InversionOptions:
    """How ``invert`` runs: which recovered features it inverts and by which method (attacks/inversion/attack.py);
    and how ``match-statistics`` fits images to small clients' statistics (attacks/inversion/statistics_matching.py)."""

    source: str = "singleton"
    method: str = "decoder"
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    optimise: OptimiseSettings = field(default_factory=OptimiseSettings)
    matching: MatchSettings = field(default_factory=MatchSettings)


def attack_names(requested: str) -> list[str]:
    if requested == "all":
        return [name for name in ATTACKS if name not in NOT_IN_ALL]
    if requested not in ATTACKS:
        raise ConfigError(f"unknown attack {requested!r}; choose one of {', '.join(ATTACKS)} or all")
    return [requested]


def attack_run(names: list[str], config: RunConfig, victims: tuple[int, ...] = (0,), progress: bool = False,
               work_dir: str | Path | None = None, defended: bool = True,
               inversion: InversionOptions = InversionOptions()) -> tuple[dict, dict]:
    """Run the case(s) these attacks need, attack and score. Returns (document, pictures) where pictures maps
    an attack to what ``grid.save_grid`` draws. ``defended=False``: the clients keep no contribution ledger."""
    document = _document(config)
    pictures = {}
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="secure-afl-case-") as scratch:
        cases = {"honest": [n for n in names if n != "difference"], "retry": [n for n in names if n == "difference"]}
        for behaviour, members in cases.items():
            if not members:
                continue
            case = Case(config, behaviour, victims, defended)
            started = time.perf_counter()
            ran = case.run(Path(scratch) / behaviour, progress=progress)
            document["cases"][behaviour] = {"rounds": len(ran.transcript.rounds), "transcript_bytes": ran.transcript.bytes,
                                            "seconds": time.perf_counter() - started,
                                            **({"metrics": _model_metrics(ran.results)} if behaviour == "honest" else
                                               {key: ran.results[key] for key in ("victims", "defended", "refusals")})}
            _attack_all(members, ServerView(ran.transcript), ran.truth, document, pictures,
                        _Inverting(inversion, config, progress))
            if behaviour == "retry":
                for name in members:
                    _report_refusals(document["attacks"][name], ran.results["refusals"])
    return _finish(document), pictures


def attack_transcript(names: list[str], path: str | Path, config: RunConfig | None,
                      progress: bool = False, inversion: InversionOptions = InversionOptions()) -> tuple[dict, dict]:
    """Attack a saved transcript; score it when ``config`` (the run's partition options) is given and the data
    reproduce the transcript."""
    view = ServerView(Transcript.load(path))
    truth = None
    if config is not None:
        config = case_config(view, config)
        truth = GroundTruth.rebuild(config, progress)
        check_reproduces(view, truth)
    document = _document(config)
    document["transcript"] = {"path": str(path), "rounds": len(view.transcript.rounds), "bytes": view.transcript.bytes}
    pictures = {}
    _attack_all(names, view, truth, document, pictures, _Inverting(inversion, config, progress))
    return _finish(document), pictures


def case_config(view: ServerView, options: RunConfig) -> RunConfig:
    """The transcript's public configuration completed with the partition and local options given here."""
    public = view.config
    known = {f.name for f in fields(RunConfig)}
    unknown = set(public) - known
    if unknown:
        raise ConfigError(f"the transcript's configuration has fields this version does not know: {sorted(unknown)}")
    return replace(options, **{name: value for name, value in public.items()
                               if name not in PARTITION_FIELDS + LOCAL_FIELDS})


def check_reproduces(view: ServerView, truth: GroundTruth) -> None:
    """Refuse to score against data that did not produce this transcript (another partition or data set).

    Readable rounds are checked client by client; secure rounds only through their sums, which pin the
    partition only where some client was left out (by design, a secure round hides who holds what)."""
    if len(truth.client_indices) != len(view.public["clients"]):
        raise ConfigError(f"the transcript has {len(view.public['clients'])} clients, the options give "
                          f"{len(truth.client_indices)}")
    for entry in view.rounds():
        layout = entry.spec.get("layout", {})
        if layout.get("kind") != "statistics" or layout.get("rows") != "x":
            continue
        if entry.secure:
            pairs = [(truth.packed(entry.included), entry.total, 1e-4)]
        else:
            pairs = [(truth.packed([k]), vector, 1e-9) for k, vector in entry.inputs().items()]
        for expected, seen, tolerance in pairs:
            if expected.shape != seen.shape or \
                    np.max(np.abs(expected - seen)) > tolerance * max(float(np.max(np.abs(expected))), 1.0):
                raise ConfigError("the local data and partition options do not reproduce this transcript; pass the "
                                  "run's --seed, --partition, --alpha, --shards-per-client and --min-client-size")
        return
    raise ConfigError("the transcript has no statistics round of the features to check the ground truth against; "
                      "it cannot be scored")


def _attack_all(names: list[str], view: ServerView, truth: GroundTruth | None, document: dict, pictures: dict,
                inverting: _Inverting) -> None:
    """Run, score and (where there is something to show) picture each attack on one view."""
    for name in names:
        if ATTACKS[name] in (InvertAttack, MatchStatistics):
            report, picture = inverting.run(ATTACKS[name], view, truth)
            document["attacks"][name] = report
            if picture is not None:
                pictures[name] = picture
            continue
        attack = ATTACKS[name]()
        if isinstance(attack, MembershipAttack):
            report = document["attacks"][name] = evaluate_membership(attack, view, truth)
            if report["metrics"]["auc"] is not None:
                best = report["metrics"]["best_test"]
                pictures[name] = {"roc": report, "title": f"{name} inference (best test: {best})"}
            continue
        output = attack.run(view)
        if isinstance(attack, GradientInversion):
            report, images = evaluate_gradient_inversion(attack, output, view, truth)
            document["attacks"][name] = report
            if images:
                pictures[name] = inversion_picture(report, images, truth)
            continue
        report = document["attacks"][name] = evaluate(attack, output, view, truth)
        if truth is not None and output.applicable and attack.targets in PICTURED and report["per_target"]:
            pictures[name] = {"truth": truth, "rows": report["per_target"], "title": f"{name}: {report['targets']}"}


@dataclass(frozen=True)
class _Inverting:
    """What the ``invert`` attack is given besides the view: its options and the public knowledge of the job."""

    options: InversionOptions
    config: RunConfig | None
    progress: bool

    def run(self, kind: type, view: ServerView, truth: GroundTruth | None) -> tuple[dict, dict | None]:
        knowledge = None if truth is None or self.config is None else self.knowledge(truth)
        if kind is MatchStatistics:
            attack = MatchStatistics(knowledge, self.options.matching, self.options.decoder)
        else:
            oracle = oracle_features(truth) if self.options.source == ORACLE and truth is not None else None
            attack = InvertAttack(knowledge, self.options.source, self.options.method, oracle, self.options.decoder,
                                  self.options.optimise)
        output = attack.run(view)
        return evaluate_feature_inversion(attack, output, view, truth, knowledge)

    def knowledge(self, truth: GroundTruth) -> Knowledge:
        return public_knowledge(self.config, truth.dataset, self.progress)


def public_knowledge(config: RunConfig, dataset: Dataset, progress: bool = False) -> Knowledge:
    """The job's public backbone and the data set's test split (disjoint from every client's data), with the
    decoder cache beside the feature cache."""
    pool = dataset.pools[dataset.test.pool]
    images = pool.read(dataset.test.indices, native_size(pool))
    encoder = job_encoder(config)
    public = PublicImages(images, dataset.labels(dataset.test),
                          f"{dataset.name} test split ({len(images)} images, disjoint from every client's data) "
                          f"and augmented copies")
    cache = None
    if config.use_cache:
        cache = Path(config.cache_dir) / "decoders" if config.cache_dir else default_cache_dir().parent / "decoders"
    return Knowledge(encoder, public, resolve_device(config.device), cache, progress)


def job_encoder(config: RunConfig) -> Encoder:
    """The job's public backbone as a differentiable map from [0, 1] images to the features the extractor gives."""
    backbone = load_backbone(config.backbone, config.weights, config.random_weights, seed=config.seed)
    identity = (f"{backbone.name}|{backbone.weights_id}|{config.resolution}|{backbone.preprocessing.mean}|"
                f"{backbone.preprocessing.std}|{backbone.preprocessing.interpolation}")
    return Encoder(backbone.model, backbone.preprocessing.mean, backbone.preprocessing.std, config.resolution, identity)


def oracle_optimisation(config: RunConfig, settings: OptimiseSettings = OptimiseSettings(), limit: int | None = None,
                        progress: bool = False) -> tuple[dict, dict]:
    """(report, picture): the ORACLE image stage on a data set no AFL job can run on (the shipped CIFAR-100 and
    ImageNet samples leave no test split): the true backbone feature of each training image, from the one
    extraction path (the feature cache), inverted by optimisation through the frozen backbone at the side the
    evaluator scores at (``native_size``). No transcript, no decoder (no public image of the domain exists), so
    the report is an upper bound for the image stage. ``limit``: only the first that many images are optimised
    (the CPU budget); every training image stays a candidate for identification."""
    dataset = load_dataset(config.dataset, config.data_dir, config.download)
    device = resolve_device(config.device)
    train, _, _ = backbone_features(config, dataset, device, progress)
    truth = GroundTruth.without_job(dataset, np.asarray(train))
    pool = dataset.pools[dataset.train.pool]
    count = len(truth.labels) if limit is None else min(limit, len(truth.labels))
    size = native_size(pool)
    originals = pool.read(dataset.train.indices[:count], size)
    encoder = job_encoder(config).to(device)
    started = time.perf_counter()
    images, _ = optimise_images(encoder, torch.from_numpy(truth.backbone[:count]).float(),
                                (channels(originals), size, size), settings, progress=progress)
    seconds = time.perf_counter() - started
    report, picture = evaluate_oracle_images(truth, encoder, images.expand(-1, 3, -1, -1).numpy(), seconds)
    report.update(image_size=size, optimise=asdict(settings), environment=environment(device, config.seed))
    return report, picture


def native_size(source) -> int:
    """The side images are decoded at: an array source's own, an image file's own up to DECODE_CAP."""
    paths = getattr(source, "paths", None)
    if paths is None:
        return int(source.read([0], DECODE_CAP).shape[-1])
    from PIL import Image

    with Image.open(paths[0]) as image:
        return min(max(image.size), DECODE_CAP)


def oracle_features(truth: GroundTruth) -> list[SourceFeature]:
    """The ORACLE source: the true backbone features of the singleton targets (the image stage alone)."""
    owner = truth.client_of()
    return [SourceFeature("oracle", int(owner[s]), int(truth.labels[s]), truth.backbone[s], True)
            for s in truth.singletons()]


def _report_refusals(report: dict, refusals: list[dict]) -> None:
    """The clients' refusals of the retried aggregation: the defence held where there is one (typed, per victim)."""
    report["refusals"] = refusals
    report["defended"] = bool(refusals)
    if refusals:
        errors = ", ".join(sorted({refusal["error"] for refusal in refusals}))
        report["reason"] = (f"defended: the clients refused {len(refusals)} repeated aggregation(s) of the same "
                            f"statistic ({errors}; each keeps a ledger of what it released); {report['reason']}")


def save_picture(path: str | Path, picture: dict) -> Path:
    """A membership report is drawn as ROC curves, a reconstruction as a grid of images."""
    if "roc" in picture:
        return save_roc(path, picture["roc"], picture["title"])
    return save_grid(path, picture)


def _model_metrics(results: dict) -> dict:
    keep = ("accuracy", "centralized_accuracy", "max_rel_diff_to_centralized", "personalized_accuracy", "min_class_count",
            "dp")
    return {k: results["metrics"][k] for k in keep if k in results["metrics"]}


def _document(config: RunConfig | None) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": "attack", "config": None if config is None else config.applicable(),
            "cases": {}, "attacks": {}}


def _finish(document: dict) -> dict:
    """One attack: its report at the top level (``applicable``, ``metrics`` …); several: a summary table."""
    reports = document["attacks"]
    if len(reports) == 1:
        (report,) = reports.values()
        document.update(report)
    document["summary"] = [{"attack": name, "applicable": r["applicable"], "threshold": r["threshold"],
                            "targets": r["metrics"]["targets"], "recovered_fraction": r["metrics"]["recovered_fraction"],
                            "identified_fraction": r["metrics"]["identified_fraction"],
                            "baseline_recovered_fraction": (r["metrics"].get("baseline") or {}).get("recovered_fraction"),
                            **({"auc": r["metrics"]["auc"], "tpr_at_1pct_fpr": r["metrics"]["tpr_at_1pct_fpr"]}
                               if "auc" in r["metrics"] else {}),
                            "seconds": r["seconds"]} for name, r in reports.items()]
    config = document["config"]
    device = resolve_device(config["device"]) if config else resolve_device("cpu")
    document["environment"] = environment(device, config["seed"] if config else None)
    return document

