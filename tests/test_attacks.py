"""The closed-form attacks on real shipped data and the real backbone, their evaluation, and the
structural guarantee that an attack cannot reach ground truth."""

import ast
import inspect
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

import attacks
from attacks.base import ATTACKS, Attack, ServerView
from attacks.case import Case, GroundTruth
from attacks.statistics.buffer import BufferInverter
from attacks.statistics.closed_form import counts_from_statistics
from attacks.suite import attack_run, attack_transcript
from protocols.transcript import Transcript
from secure_afl.config import RunConfig
from secure_afl.features.buffer import RandomBuffer
from secure_afl.runner import PARTITION_FIELDS
from secure_afl.statistics import compute_statistics

DEFAULT = RunConfig(protocol="plaintext")  # the default job (mnist5k, K = 20, α = 0.1, seed 0), server in the clear
SMALL = replace(DEFAULT, buffer_width=128, buffer_activation="tanh")  # 128-d statistics: cheap under HE


@pytest.fixture(scope="module")
def default_plaintext(default_job_plaintext):
    """Every attack of ``all`` on the default job's transcript, scored (tests/conftest.py runs it once)."""
    assert default_job_plaintext.attack_code == 0
    return json.loads(default_job_plaintext.report.read_text())


@pytest.fixture(scope="module")
def default_truth():
    """The default job's ground truth, read-only: tests index it (copies) and never write to it."""
    return GroundTruth.rebuild(DEFAULT)


def test_singletons_are_recovered_exactly_and_identified(default_plaintext):
    report = default_plaintext["attacks"]["singleton"]
    metrics = report["metrics"]
    assert report["applicable"] and metrics["targets"] >= 10
    assert metrics["recovered_fraction"] == 1.0 and metrics["identified_fraction"] == 1.0
    assert all(row["score"] >= 0.9999 and row["certified"] for row in report["per_target"])
    # a guess without the transcript gets nowhere near
    assert metrics["baseline"]["recovered_fraction"] == 0.0 and metrics["baseline"]["identified_fraction"] < 0.2
    assert report["threshold"] == 0.9999 and "honest-but-curious" in report["threat_model"]


def test_counts_and_class_means_are_exact(default_plaintext, default_job_plaintext):
    counts = default_plaintext["attacks"]["counts"]["metrics"]
    assert counts["targets"] == 20 and counts["recovered_fraction"] == 1.0 and counts["cell_exact_fraction"] == 1.0
    assert counts["baseline"]["recovered_fraction"] == 0.0
    means = default_plaintext["attacks"]["class-means"]
    assert means["metrics"]["recovered_fraction"] == 1.0
    assert min(row["score"] for row in means["per_target"]) > 1 - 1e-12
    assert means["metrics"]["baseline"]["recovered_fraction"] == 0.0
    # the model of the run that wrote the transcript is centralized ridge's: recording did not change training
    assert json.loads(default_job_plaintext.run.read_text())["metrics"]["max_rel_diff_to_centralized"] < 1e-9


@pytest.mark.parametrize("protocol", ["mask", "he-bfv", "he-ckks", "he-ckks-approx"])
def test_secure_protocols_leave_the_per_client_attacks_nothing(protocol):
    """Nothing is read from a masked or encrypted round; a protocol with a known leak (approximate CKKS's shared
    decryptions) says so beside that verdict, since these attacks do not exploit it."""
    document, _ = attack_run(["singleton", "counts"], replace(SMALL, protocol=protocol))
    for name in ("singleton", "counts"):
        report = document["attacks"][name]
        assert not report["applicable"] and protocol in report["reason"]
        assert ("Known leak of this protocol, not attacked here" in report["reason"]) == (protocol == "he-ckks-approx")
        assert report["metrics"]["targets"] > 0 and report["metrics"]["recovered_fraction"] == 0.0
        assert report["reconstructions"] == {}


@pytest.mark.parametrize("protocol", ["plaintext", "mask", "he-bfv"])
def test_without_the_ledger_the_difference_attack_recovers_a_dropped_clients_vector_exactly(protocol):
    document, _ = attack_run(["difference"], replace(SMALL, protocol=protocol), victims=(3, 11), defended=False)
    report = document["attacks"]["difference"]
    assert report["applicable"] and report["metrics"]["targets"] == 2
    assert report["metrics"]["recovered_fraction"] == 1.0
    assert max(row["score"] for row in report["per_target"]) <= 1e-9
    assert report["metrics"]["baseline"]["recovered_fraction"] == 0.0
    assert document["cases"]["retry"]["rounds"] == 3 and report["refusals"] == [] and not report["defended"]


@pytest.mark.parametrize("protocol", ["mask", "he-bfv"])
def test_the_clients_ledgers_refuse_the_retry_and_the_attack_reports_the_defence(protocol):
    document, _ = attack_run(["difference"], replace(SMALL, protocol=protocol), victims=(3, 11))
    report = document["attacks"]["difference"]
    assert not report["applicable"] and report["defended"] and report["reason"].startswith("defended")
    assert [(r["victim"], r["error"]) for r in report["refusals"]] == [(3, "StatisticReusedError"),
                                                                      (11, "StatisticReusedError")]
    assert report["metrics"]["recovered_fraction"] == 0.0 and report["reconstructions"] == {}
    assert "curious server" in report["threat_model"] and report["threshold"] == 1e-9
    assert document["cases"]["retry"]["rounds"] == 1 and document["cases"]["retry"]["defended"]


def test_an_honest_transcript_gives_the_difference_attack_nothing(default_plaintext):
    report = default_plaintext["attacks"]["difference"]
    assert not report["applicable"] and report["metrics"]["targets"] == 0


def test_counts_follow_from_g_and_h_when_they_are_not_sent(default_truth):
    truth = default_truth
    for client in (0, 7):
        rows = truth.client_indices[client]
        stats = compute_statistics(truth.x[rows], truth.labels[rows], truth.num_classes)
        counts, exact = counts_from_statistics(stats, sent=False)
        assert len(rows) <= stats.dim and exact and np.array_equal(counts, stats.class_counts)
    rows = np.concatenate(truth.client_indices)[:1500]  # more rows than dimensions: no longer exact
    stats = compute_statistics(truth.x[rows], truth.labels[rows], truth.num_classes)
    assert not counts_from_statistics(stats, sent=False)[1]


def test_tanh_buffer_inverts_to_the_backbone_features_exactly(default_truth):
    truth = default_truth
    buffer = RandomBuffer(1536, "tanh", seed=5)
    import torch

    from secure_afl.features.feature_map import FeatureMap

    raw = torch.from_numpy(truth.backbone[:6].astype(np.float32))
    x, _ = FeatureMap(buffer, "l2", 1.0).apply(raw)
    projection, _ = buffer.parameters(raw.shape[1])
    inverter = BufferInverter(projection.double().numpy(), None, "tanh")
    for row, original in zip(x.double().numpy(), truth.backbone[:6]):
        recovered, residual = inverter.invert(row)
        assert residual < 1e-5
        assert np.max(np.abs(recovered - original)) <= 1e-6 * np.max(np.abs(original))


def test_the_same_configuration_gives_the_same_clients(default_truth):
    one, two = default_truth, GroundTruth.rebuild(DEFAULT)  # two rebuilds: the fixture's and this one
    assert all(np.array_equal(a, b) for a, b in zip(one.client_indices, two.client_indices))
    other = GroundTruth.rebuild(replace(DEFAULT, seed=1))
    assert not all(np.array_equal(a, b) for a, b in zip(one.client_indices, other.client_indices))


def test_a_saved_transcript_is_scored_only_against_the_partition_that_made_it(tmp_path):
    Case(replace(DEFAULT, seed=2)).run(tmp_path / "t")
    document, _ = attack_transcript(["singleton"], tmp_path / "t", replace(DEFAULT, seed=2))
    assert document["scored"] and document["metrics"]["recovered_fraction"] == 1.0
    from secure_afl.errors import ConfigError

    with pytest.raises(ConfigError, match="do not reproduce"):
        attack_transcript(["singleton"], tmp_path / "t", DEFAULT)
    unscored, _ = attack_transcript(["singleton"], tmp_path / "t", None)
    assert not unscored["scored"] and unscored["metrics"]["targets"] is None
    assert sum(entry["items"] for entry in unscored["reconstructions"].values()) == document["metrics"]["matched"]


# -- the structure that keeps ground truth away from attacks -------------------------------
FORBIDDEN = ("attacks.case", "attacks.evaluation", "attacks.inversion.evaluation", "attacks.suite", "secure_afl.runner", "secure_afl.data",
             "secure_afl.features.extract", "secure_afl.features.backbone", "secure_afl.features.cache")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _reachable(module: str, seen: set[str]) -> set[str]:
    """Modules of this project an import of ``module`` loads, transitively (packages' __init__ included)."""
    root = Path(attacks.__file__).parent.parent
    if module in seen or module.split(".")[0] not in ("attacks", "protocols", "secure_afl"):
        return seen
    seen.add(module)
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:depth])
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                for name in _imports(candidate):
                    _reachable(name, seen)
    return seen


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_cannot_import_ground_truth(name):
    module = inspect.getmodule(ATTACKS[name]).__name__
    reached = _reachable(module, set())
    assert module in reached and not [m for m in reached if m.startswith(FORBIDDEN)]


def test_forbidden_imports_are_detected():
    """The walk above does see through packages: the evaluator itself reaches the case and the runner."""
    assert any(m.startswith("secure_afl.runner") for m in _reachable("attacks.evaluation", set()))


def test_an_attack_receives_a_view_and_nothing_else(default_job_plaintext):
    assert [f.name for f in fields(ServerView)] == ["transcript"]
    assert list(inspect.signature(Attack.reconstruct).parameters) == ["self", "view", "rounds"]
    for cls in ATTACKS.values():  # membership scores records the evaluator hands it (tests/test_membership.py)
        if cls.targets != "membership":
            assert list(inspect.signature(cls.reconstruct).parameters) == ["self", "view", "rounds"]
    transcript = default_job_plaintext.transcript  # the default job's, written by `secure-afl run`
    public = Transcript.load(transcript).public
    assert not set(PARTITION_FIELDS) & set(public["config"])  # the partition seed never enters a transcript
    files = {p.relative_to(transcript).parts[0] for p in transcript.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "rounds"}


def test_every_deepafl_classifier_round_leaks_its_layers_singletons():
    config = replace(DEFAULT, algorithm="deepafl", depth=1, dataset="digits", resolution=32, clients=10)
    document, _ = attack_run(["singleton"], config)
    report = document["attacks"]["singleton"]
    assert report["metrics"]["recovered_fraction"] == 1.0
    by_round = report["metrics"]["by_round"]
    assert set(by_round) == {"deepafl/classifier/0", "deepafl/classifier/1"}  # Φ_0 = sX (as X) and Φ_1
    assert all(row["recovered"] == row["matched"] == report["metrics"]["targets"] for row in by_round.values())
    assert "H holds residuals" in report["rounds"]["1:deepafl/residual/0"]
    assert {"x", "phi/1"} == set(report["identification"]["spaces"])


def test_fedavg_rounds_are_not_statistics_but_a_retry_still_gives_a_clients_update_away():
    config = replace(DEFAULT, algorithm="fedavg", rounds=2, dataset="digits", resolution=32, clients=10)
    document, _ = attack_run(["singleton", "difference"], config, victims=(4,))
    singles = document["attacks"]["singleton"]
    assert not singles["applicable"] and "model parameters" in singles["reason"]
    difference = document["attacks"]["difference"]
    assert difference["metrics"]["recovered_fraction"] == 1.0 and difference["per_target"][0]["client"] == 4


def test_gram_factorisation_recovers_the_clients_rows_at_k_100():
    document, _ = attack_run(["gram"], replace(DEFAULT, clients=100))
    check_gram_report(document["attacks"]["gram"])


def test_gram_factorisation_recovers_the_default_jobs_rows(default_plaintext):
    check_gram_report(default_plaintext["attacks"]["gram"])


def check_gram_report(report: dict) -> None:
    metrics = report["metrics"]
    assert report["threshold"] == 0.95 and metrics["targets"] == 4000
    assert metrics["recovered_fraction"] >= 0.8
    assert metrics["recovered_fraction"] >= 10 * metrics["baseline"]["recovered_fraction"]
    assert metrics["certified_correct"] == metrics["certified"] > 0  # no certified row is wrong
    assert sum(row["targets"] for row in metrics["by_class_size"].values()) == 4000
