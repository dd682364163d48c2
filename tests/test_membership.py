"""Membership inference: the ROC figures against hand-computed values, each test's mechanism on synthetic
statistics, the attack end to end on a small job under plaintext and mask, and the CLI."""

import json
from dataclasses import fields, replace

import numpy as np
import pytest

from attacks.base import ATTACKS
from attacks.case import GroundTruth
from attacks.membership.attack import UNION, Challenge, MembershipAttack
from attacks.membership.evaluation import build_challenge
from attacks.membership.model import shadow_margins
from attacks.membership.roc import auc, downsample, epsilon_lower_bound, roc_curve, tpr_at_fpr
from attacks.membership.statistics import Reference, Release, Unanswerable, leverage_score, range_score
from attacks.suite import attack_run
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.statistics import compute_statistics

# 128-d statistics of 30 clients: most hold fewer rows than dimensions, a few do not
SMALL = RunConfig(protocol="plaintext", dataset="digits", resolution=32, buffer_width=128, buffer_activation="tanh",
                  clients=30)
SMALL_ARGS = ["--dataset", "digits", "--resolution", "32", "--buffer-width", "128", "--buffer-activation", "tanh",
              "--clients", "30"]


# -- ROC figures -------------------------------------------------------------------------------
def test_roc_auc_and_tpr_by_hand():
    roc = roc_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert roc.fpr.tolist() == [0, 0, 0.5, 0.5, 1] and roc.tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert auc(roc) == 0.75  # 3 of the 4 (member, non-member) pairs are ordered right
    assert tpr_at_fpr(roc, 0.01) == 0.5 and tpr_at_fpr(roc, 0.5) == 1.0
    tied = roc_curve(np.array([1.0, 1.0]), np.array([1, 0]))
    assert tied.fpr.tolist() == [0, 1] and auc(tied) == 0.5  # a tie moves both rates at once: half a pair


def test_auc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    members = rng.random(300) < 0.4
    pairs = scores[members][:, None] - scores[~members][None, :]
    assert auc(roc_curve(scores + members, members)) > auc(roc_curve(scores, members))
    assert auc(roc_curve(scores, members)) == pytest.approx(np.mean(pairs > 0) + np.mean(pairs == 0) / 2, abs=1e-12)


def test_epsilon_lower_bounds_by_hand():
    assert epsilon_lower_bound(roc_curve(np.array([2.0, 1.0]), np.array([1, 0]))) == np.inf  # TPR 1 at FPR 0
    # 10 members, 10 non-members; one threshold gives TPR 0.5 at FPR 0.1
    members = np.r_[np.ones(10), np.zeros(10)].astype(bool)
    roc = roc_curve(np.r_[2 * np.ones(5), np.zeros(5), 2, np.zeros(9)], members)
    assert roc.fpr.tolist() == [0, 0.1, 1] and roc.tpr.tolist() == [0, 0.5, 1]
    # ε ≥ max(log(0.5 / 0.1), log(0.9 / 0.5)); with δ: log((0.5 − δ) / 0.1)
    assert epsilon_lower_bound(roc) == pytest.approx(np.log(5))
    assert epsilon_lower_bound(roc, delta=0.05) == pytest.approx(np.log(4.5))
    # perfectly separated, 100 each; Clopper–Pearson at 95 %: TPR ≥ 0.025^(1/100), FPR ≤ 1 − 0.025^(1/100)
    separated = roc_curve(np.arange(200.0), np.arange(200) >= 100)
    low = 0.025 ** (1 / 100)
    assert epsilon_lower_bound(separated, confidence=0.95) == pytest.approx(np.log(low / (1 - low)), rel=1e-9)
    assert epsilon_lower_bound(roc_curve(np.zeros(10), np.arange(10) < 5)) == 0.0  # one tie: the diagonal


def test_downsampled_curves_keep_the_ends_and_the_low_fpr_region():
    rng = np.random.default_rng(0)
    members = rng.random(5000) < 0.5
    roc = roc_curve(rng.standard_normal(5000) + members, members)
    points = np.array(downsample(roc, 50))
    assert len(points) <= 50 and points[0].tolist() == [0, 0] and points[-1].tolist() == [1, 1]
    assert np.all(np.diff(points[:, 0]) >= 0) and np.all(np.diff(points[:, 1]) >= 0)
    assert np.sum(points[:, 0] < 0.01) >= 10
    for fpr, tpr in points:  # every kept point is a point of the full curve
        assert np.any((roc.fpr == fpr) & (roc.tpr == tpr))


# -- the tests' mechanisms on synthetic statistics ---------------------------------------------
def _release(x, labels, classes):
    stats = compute_statistics(x, labels, classes)
    return Release(stats, stats.class_counts)


def test_the_range_test_separates_rows_behind_a_low_rank_gram(synthetic):
    x, labels, classes = synthetic
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    release = _release(x[:15], labels[:15], classes)
    reference = Reference(x[400:], labels[400:], classes)
    residual = -range_score(release, x[:30], labels[:30], reference, 0.1)
    assert residual[:15].max() < 1e-12 and residual[15:].min() > 0.1
    with pytest.raises(Unanswerable, match="full rank"):
        range_score(_release(x[:100], labels[:100], classes), x[:30], labels[:30], reference, 0.1)


def test_noise_on_the_statistics_pulls_every_test_towards_a_guess(synthetic):
    """DP's noise makes G full rank and indefinite and the counts fractional: the tests still answer, weakly."""
    x, labels, classes = synthetic
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    stats = compute_statistics(x[:15], labels[:15], classes)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((24, 24))
    noisy = replace(stats, gram=stats.gram + (noise + noise.T), cross=stats.cross + rng.standard_normal((24, classes)))
    reference = Reference(x[400:], labels[400:], classes)
    held_out = [i for i in range(15, 400) if labels[i] in set(labels[:15])][:15]  # non-members of the same classes
    z, y, members = np.vstack([x[:15], x[held_out]]), np.r_[labels[:15], labels[held_out]], np.arange(30) < 15
    for score in (range_score, leverage_score):
        clean = auc(roc_curve(score(Release(stats, stats.class_counts), z, y, reference, 0.1), members))
        blurred = auc(roc_curve(score(Release(noisy, stats.class_counts), z, y, reference, 0.1), members))
        assert clean == 1.0 and blurred < 0.8


def test_leverage_finds_members_with_more_rows_than_dimensions(synthetic):
    x, labels, classes = synthetic
    release = _release(x[:60], labels[:60], classes)  # 60 rows, 24 dimensions: G has full rank
    scores = leverage_score(release, x[:120], labels[:120], Reference(x[400:], labels[400:], classes), 0.1)
    explicit = np.einsum("ij,ji->i", x[:120], np.linalg.solve(release.stats.gram + 0.1 * np.eye(24), x[:120].T))
    assert np.allclose(-scores, explicit, rtol=1e-9)
    assert auc(roc_curve(scores, np.arange(120) < 60)) > 0.8


def test_shadow_margins_in_equal_a_ridge_retrained_with_the_candidate(synthetic):
    x, labels, classes = synthetic
    shadow = compute_statistics(x[:50], labels[:50], classes)
    margin_in, margin_out = shadow_margins(shadow, x[100:103], labels[100:103], 0.1)
    for i, (z, y) in enumerate(zip(x[100:103], labels[100:103])):
        retrained = compute_statistics(np.vstack([x[:50], z]), np.r_[labels[:50], y], classes)
        for stats, margin in ((shadow, margin_out), (retrained, margin_in)):
            logits = z @ np.linalg.solve(stats.gram + 0.1 * np.eye(24), stats.cross)
            assert margin[i] == pytest.approx(logits[y] - np.delete(logits, y).max(), rel=1e-9)


# -- the attack on a small job -----------------------------------------------------------------
@pytest.fixture(scope="module")
def plaintext():
    return attack_run(["membership"], SMALL)[0]


def test_the_range_test_finds_every_clients_rows_under_plaintext(plaintext):
    metrics = plaintext["metrics"]
    assert plaintext["applicable"] and metrics["best_test"] == "range @ clients"
    assert metrics["auc"] >= 0.99 and metrics["tpr_at_1pct_fpr"] >= 0.99
    assert metrics["baseline"]["auc"] == 0.5 and plaintext["threshold"] == 0.01 and plaintext["threat_model"]
    figures = plaintext["tests"]["range"]["clients"]
    assert figures["members"] > 500 and figures["epsilon_lower_bound_95"] > 4
    # clients with at least as many rows as dimensions, and the union, get no range test: G has full rank
    assert "full rank 128" in plaintext["skipped"]["range @ union"]
    for test in ("tracing-mean", "gaussian-lr", "leverage", "lira"):
        union = plaintext["tests"][test][UNION]
        assert union["members"] == 500 and 0.3 < union["auc"] < 0.8  # weak on the pooled model of 1437 rows
    clients = {test: levels["clients"]["auc"] for test, levels in plaintext["tests"].items() if "auc" in levels["clients"]}
    assert 0.5 < clients["tracing-mean"] < clients["gaussian-lr"] < clients["range"]


def test_under_mask_the_tests_run_on_the_aggregate_only():
    document, pictures = attack_run(["membership"], replace(SMALL, protocol="mask"))
    assert document["applicable"] and document["metrics"]["best_test"].endswith("@ union")
    assert "protocol mask" in document["skipped"]["all tests @ clients"]
    for test, levels in document["tests"].items():
        assert "auc" not in levels["clients"]
    assert "auc" in document["tests"]["tracing-mean"][UNION] and "auc" in document["tests"]["lira"][UNION]
    assert document["metrics"]["auc"] < 0.75 and "membership" in pictures


def test_the_challenge_hides_membership_and_keeps_the_reference_apart():
    truth = GroundTruth.rebuild(SMALL)
    challenge, membership = build_challenge(truth, list(range(SMALL.clients)))
    assert [f.name for f in fields(Challenge)] == ["x", "labels", "questions", "reference"]
    train_rows = {row.tobytes() for row in truth.x}
    reference_rows = {row.tobytes() for row in challenge.reference.x}
    candidates = [row.tobytes() for row in challenge.x]
    assert not reference_rows & set(candidates) and not reference_rows & train_rows
    for client in (0, 7):
        asked, member = challenge.questions[client], membership[client]
        own = {row.tobytes() for row in truth.x[truth.client_indices[client]]}
        assert member.sum() > 0 and {candidates[i] for i in asked[member]} <= own
        assert set(challenge.labels[asked]) <= set(truth.labels[truth.client_indices[client]])
        assert not {candidates[i] for i in asked[~member]} & train_rows
        # balanced in every class: who is asked, and about which class, says nothing about membership
        for label in np.unique(challenge.labels[asked]):
            in_class = challenge.labels[asked] == label
            assert member[in_class].sum() == (~member[in_class]).sum()


def test_membership_is_a_registered_attack_run_on_a_view_and_a_challenge():
    assert ATTACKS["membership"] is MembershipAttack
    import inspect

    assert list(inspect.signature(MembershipAttack.run).parameters) == ["self", "view", "challenge"]


def test_the_cli_writes_the_figures_and_the_roc_picture(tmp_path, capsys):
    out, picture = tmp_path / "membership.json", tmp_path / "roc.png"
    code = main(["attack", "--attack", "membership", *SMALL_ARGS, "--protocol", "plaintext", "--out", str(out),
                 "--grid", str(picture)])
    printed = capsys.readouterr().out
    assert code == 0 and "membership: AUC 1.000" in printed and "range @ clients" in printed
    report = json.loads(out.read_text())
    assert report["attack"] == "membership" and report["metrics"]["auc"] >= 0.99
    assert 0 <= report["metrics"]["tpr_at_1pct_fpr"] <= 1
    roc = report["tests"]["range"]["clients"]["roc"]
    assert roc[0] == [0, 0] and roc[-1] == [1, 1] and len(roc) <= 200
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- against DP on the statistics ------------------------------------------------------------------
def test_dp_on_the_statistics_drives_membership_towards_a_guess(plaintext):
    """Fixed seed: the best test's AUC falls as ε falls (within a tolerance) and is a guess's at ε = 1. Without
    DP it is the module's plaintext attack on SMALL."""
    assert plaintext["applicable"]
    aucs = [plaintext["metrics"]["auc"]]
    for epsilon in (16.0, 4.0, 1.0):
        document, _ = attack_run(["membership"], replace(SMALL, dp_epsilon=epsilon, dp_placement="local"))
        assert document["applicable"]
        aucs.append(document["metrics"]["auc"])
    assert aucs[0] >= 0.99 and aucs[-1] <= 0.6
    assert all(later <= earlier + 0.03 for earlier, later in zip(aucs, aucs[1:]))


@pytest.mark.slow
def test_on_the_default_job_dp_at_epsilon_1_leaves_no_test_above_0_6():
    document, _ = attack_run(["membership"], RunConfig(protocol="plaintext", dp_epsilon=1.0, dp_placement="local"))
    assert document["metrics"]["auc"] <= 0.6 and document["metrics"]["baseline"]["auc"] == 0.5


def test_a_test_split_too_small_to_ask_about_gives_reasons_not_a_roc():
    config = RunConfig(protocol="plaintext", dataset="samples-cifar10", clients=2, alpha=1.0)
    document, _ = attack_run(["membership"], config)
    assert document["metrics"]["auc"] is None
    answered = [figures for levels in document["tests"].values() for figures in levels.values() if "auc" in figures]
    reasons = [figures["reason"] for levels in document["tests"].values() for figures in levels.values()
               if "reason" in figures]
    assert not answered and any("a ROC needs both" in reason for reason in reasons)
