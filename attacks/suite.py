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
and scores its ROC; without ground truth it has nothing to ask about.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from attacks.base import ATTACKS, ServerView
from attacks.case import Case, GroundTruth
from attacks.evaluation import evaluate
from attacks.gradient.evaluation import evaluate_inversion, inversion_picture
from attacks.gradient.inversion import GradientInversion
from attacks.grid import save_grid
from attacks.membership.attack import MembershipAttack
from attacks.membership.evaluation import evaluate_membership
from attacks.membership.plot import save_roc
from protocols.transcript import Transcript
from secure_afl.config import RunConfig
from secure_afl.device import resolve_device
from secure_afl.errors import ConfigError
from secure_afl.results import SCHEMA_VERSION, environment
from secure_afl.runner import LOCAL_FIELDS, PARTITION_FIELDS

PICTURED = ("singletons", "samples", "batches", "membership")  # target kinds with a picture: single images, or ROC curves


def attack_names(requested: str) -> list[str]:
    if requested == "all":
        return list(ATTACKS)
    if requested not in ATTACKS:
        raise ConfigError(f"unknown attack {requested!r}; choose one of {', '.join(ATTACKS)} or all")
    return [requested]


def attack_run(names: list[str], config: RunConfig, victims: tuple[int, ...] = (0,), progress: bool = False,
               work_dir: str | Path | None = None, defended: bool = True) -> tuple[dict, dict]:
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
            _attack_all(members, ServerView(ran.transcript), ran.truth, document, pictures)
            if behaviour == "retry":
                for name in members:
                    _report_refusals(document["attacks"][name], ran.results["refusals"])
    return _finish(document), pictures


def attack_transcript(names: list[str], path: str | Path, config: RunConfig | None,
                      progress: bool = False) -> tuple[dict, dict]:
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
    _attack_all(names, view, truth, document, pictures)
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


def _attack_all(names: list[str], view: ServerView, truth: GroundTruth | None, document: dict, pictures: dict) -> None:
    """Run, score and (where there is something to show) picture each attack on one view."""
    for name in names:
        attack = ATTACKS[name]()
        if isinstance(attack, MembershipAttack):
            report = document["attacks"][name] = evaluate_membership(attack, view, truth)
            if report["metrics"]["auc"] is not None:
                best = report["metrics"]["best_test"]
                pictures[name] = {"roc": report, "title": f"{name} inference (best test: {best})"}
            continue
        output = attack.run(view)
        if isinstance(attack, GradientInversion):
            report, images = evaluate_inversion(attack, output, view, truth)
            document["attacks"][name] = report
            if images:
                pictures[name] = inversion_picture(report, images, truth)
            continue
        report = document["attacks"][name] = evaluate(attack, output, view, truth)
        if truth is not None and output.applicable and attack.targets in PICTURED and report["per_target"]:
            pictures[name] = {"truth": truth, "rows": report["per_target"], "title": f"{name}: {report['targets']}"}


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
    return {"schema_version": SCHEMA_VERSION, "kind": "attack", "config": None if config is None else asdict(config),
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

