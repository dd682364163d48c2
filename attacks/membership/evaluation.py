"""The membership evaluator: the challenge built from ground truth, the answers kept back, ROC figures.

Members are training rows (the mapped features X the statistics are built from); non-members are
held-out rows (the test split, which no client holds) of the same classes. The test split is cut
per class at random into two halves: non-member candidates, and the public reference rows the
attacker may use (for means, variances, shadow models), so the reference never contains a candidate.

Questions: for client k, a balanced sample of each class c it holds: s = min(n_kc, candidates of c)
of its rows of c and as many non-member candidates of c, drawn at random. Balancing each (client,
class) cell matters once the statistics are noisy: a score whose level differs between clients or
classes (a client's noisy mean is further from the reference than another's) would otherwise tell
members from non-members by who was asked and about which class, not by membership (an unbalanced
design gave AUC 0.69 at ε = 1 on 30 digits clients, where the balanced one gives a guess's). For the
union of the round's clients, UNION_MEMBERS of their rows at random and every non-member candidate.
The candidates are handed over shuffled, features and labels only.

Figures per test and level: ``clients`` pools every per-client question into one ROC (one threshold
for all clients, as an attacker without per-client calibration would use), ``union`` is the union's.
The headline is the best test. The baseline guesses without the transcript: AUC 0.5 and a TPR equal
to the FPR.
"""

from __future__ import annotations

import numpy as np

from attacks.base import NotApplicable, ServerView
from attacks.case import GroundTruth
from attacks.membership.attack import TESTS, UNION, Challenge, MembershipAttack, release_round
from attacks.membership.roc import TARGET_FPR, summarise
from attacks.membership.statistics import Reference

UNION_MEMBERS = 500
SPLIT_SEED = 0  # which held-out rows are candidates and which are public: not secret, fixed for comparable runs
LEVELS = ("clients", UNION)
TARGETS = ("candidate records: each client's training rows (members) and held-out rows of its classes (non-members), "
           "and for the union of the round's clients a sample of their rows and every held-out candidate")


def build_challenge(truth: GroundTruth, included: list[int]) -> tuple[Challenge, dict[int | str, np.ndarray]]:
    """The challenge, and for each question whether each candidate asked about is a member (kept back)."""
    rng = np.random.default_rng(SPLIT_SEED)
    held_out, public = [], []
    for label in range(truth.num_classes):
        rows = rng.permutation(np.flatnonzero(truth.test_labels == label))
        held_out.append(rows[: len(rows) // 2])
        public.append(rows[len(rows) // 2:])
    held_out, public = np.concatenate(held_out), np.concatenate(public)
    train = np.concatenate([truth.client_indices[k] for k in included])
    x = np.concatenate([truth.x[train], truth.test_x[held_out]])
    labels = np.concatenate([truth.labels[train], truth.test_labels[held_out]])
    member = np.r_[np.ones(len(train), dtype=bool), np.zeros(len(held_out), dtype=bool)]
    shuffle = rng.permutation(len(x))
    position = np.empty_like(shuffle)
    position[shuffle] = np.arange(len(x))  # candidate i before shuffling sits at position[i]
    first = dict(zip(train.tolist(), range(len(train))))
    outsiders = len(train) + np.arange(len(held_out))
    asked: dict[int | str, np.ndarray] = {}
    outsider_labels = truth.test_labels[held_out]
    for k in included:
        rows = truth.client_indices[k]
        cells = []
        for label in np.unique(truth.labels[rows]):
            own = rows[truth.labels[rows] == label]
            others = outsiders[outsider_labels == label]
            size = min(len(own), len(others))
            cells.append([first[s] for s in rng.choice(own, size, replace=False)])
            cells.append(rng.choice(others, size, replace=False))
        asked[k] = np.concatenate(cells).astype(np.int64)
    sample = rng.choice(len(train), min(UNION_MEMBERS, len(train)), replace=False)
    asked[UNION] = np.r_[np.sort(sample), outsiders]
    reference = Reference(truth.test_x[public], truth.test_labels[public], truth.num_classes)
    challenge = Challenge(x[shuffle], labels[shuffle], {t: position[rows] for t, rows in asked.items()}, reference)
    return challenge, {t: member[rows] for t, rows in asked.items()}


def evaluate_membership(attack: MembershipAttack, view: ServerView, truth: GroundTruth | None,
                        delta: float = 0.0) -> dict:
    """The attack's report: per test and level AUC, TPR at 1 % FPR, ε lower bounds at ``delta`` and the ROC."""
    report = {"attack": attack.name, "threat_model": attack.threat_model, "metric": attack.metric,
              "threshold": attack.threshold, "targets": TARGETS}
    empty = {"targets": None, "recovered_fraction": None, "identified_fraction": None, "auc": None,
             "tpr_at_1pct_fpr": None}
    rounds: dict[str, str] = {}
    try:
        included = list(release_round(view, rounds).entry.included)
    except NotApplicable as exc:
        return {**report, "applicable": False, "reason": str(exc), "rounds": rounds, "seconds": 0.0,
                "scored": truth is not None, "metrics": empty}
    if truth is None:
        return {**report, "applicable": False, "reason": "membership needs candidate records, which the evaluator "
                "draws from the data: pass the run's options to score the transcript", "rounds": rounds,
                "seconds": 0.0, "scored": False, "metrics": empty}
    challenge, membership = build_challenge(truth, included)
    output = attack.run(view, challenge)
    tests = {test: {level: _level(output.scores.get(test, {}), membership, level, delta) for level in LEVELS}
             for test in TESTS}
    scored = [(figures["auc"], figures["tpr_at_1pct_fpr"], f"{test} @ {level}", figures["epsilon_lower_bound_95"])
              for test, levels in tests.items() for level, figures in levels.items() if "auc" in figures]
    metrics = dict(empty, targets=int(sum(len(rows) for rows in membership.values())))
    if scored:
        best = max(scored)
        metrics.update(auc=best[0], tpr_at_1pct_fpr=best[1], best_test=best[2],
                       max_tpr_at_1pct_fpr=max(s[1] for s in scored),
                       epsilon_lower_bound_95=max(s[3] for s in scored))
    metrics["baseline"] = {"description": "a guess without the transcript (random scores)", "auc": 0.5,
                           "tpr_at_1pct_fpr": TARGET_FPR, "recovered_fraction": None}
    return {**report, "applicable": output.applicable, "reason": output.reason, "rounds": output.rounds,
            "seconds": output.seconds, "scored": True, "metrics": metrics,
            "challenge": {"candidates": len(challenge.x), "reference_rows": len(challenge.reference.x),
                          "questions": {str(t): {"members": int(m.sum()), "non_members": int((~m).sum())}
                                        for t, m in membership.items()}},
            "tests": tests, "skipped": output.skipped}


def _level(scores: dict, membership: dict, level: str, delta: float) -> dict:
    targets = [t for t in scores if (t == UNION) == (level == UNION)]
    if not targets:
        return {"reason": "not answered (see skipped)"}
    members = np.concatenate([membership[t] for t in targets])
    if members.all() or not members.any():  # e.g. a test split with no held-out candidate of a client's classes
        return {"reason": f"the data give {int(members.sum())} members and {int((~members).sum())} non-members to ask "
                          "about: a ROC needs both"}
    return summarise(np.concatenate([scores[t] for t in targets]), members, delta)
