"""ROC curves of membership scores, the figures read off them, and the privacy loss they prove.

Conventions follow LiRA (Carlini et al. 2022): a higher score means "member", the headline is the
AUC beside the TPR at 1 % FPR (an attack that is confident about a few records matters even when
its AUC is modest), and curves are drawn on log axes. A test that separates members from
non-members with TPR at FPR implies, for any (ε, δ)-DP mechanism, TPR ≤ e^ε FPR + δ and
1 − FPR ≤ e^ε (1 − TPR) + δ (Kairouz et al. 2015), so every ROC point bounds ε from below. On a
finite sample the point estimate is optimistic (an FPR of 0 makes it infinite), so the bound is
also given at 95 % confidence with Clopper–Pearson intervals, as Jagielski et al. 2020 audit DP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

TARGET_FPR = 0.01
CONFIDENCE = 0.95
ROC_POINTS = 200  # points kept per curve in reports


@dataclass(frozen=True)
class Roc:
    """Every distinct threshold's (FPR, TPR), from (0, 0) to (1, 1), with the counts they come from."""

    fpr: np.ndarray
    tpr: np.ndarray
    false_positives: np.ndarray
    true_positives: np.ndarray
    negatives: int
    positives: int


def roc_curve(scores: np.ndarray, members: np.ndarray) -> Roc:
    """The ROC of ``scores`` (higher: member) against the truth ``members``; tied scores move together."""
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(members, dtype=bool)
    if scores.shape != members.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and membership {members.shape} must be matching vectors")
    positives, negatives = int(members.sum()), int((~members).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("a ROC needs at least one member and one non-member")
    if np.any(np.isnan(scores)):
        raise ValueError("membership scores must not be NaN")
    order = np.argsort(-scores, kind="stable")
    ranked, truth = scores[order], members[order]
    last_of_tie = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1]
    true_positives = np.r_[0, np.cumsum(truth)[last_of_tie]]
    false_positives = np.r_[0, np.cumsum(~truth)[last_of_tie]]
    return Roc(false_positives / negatives, true_positives / positives, false_positives, true_positives,
               negatives, positives)


def auc(roc: Roc) -> float:
    """Area under the curve (trapezoids, so ties count one half: the Mann–Whitney statistic)."""
    return float(np.sum(np.diff(roc.fpr) * (roc.tpr[1:] + roc.tpr[:-1]) / 2))


def tpr_at_fpr(roc: Roc, fpr: float = TARGET_FPR) -> float:
    """The best TPR among thresholds whose FPR is at most ``fpr``."""
    return float(roc.tpr[roc.fpr <= fpr].max())


def epsilon_lower_bound(roc: Roc, delta: float = 0.0, confidence: float | None = None) -> float:
    """The largest ε any ROC point proves, at ``delta``: from the point estimates (``confidence`` None;
    infinite when some threshold has TPR > δ at FPR 0) or from Clopper–Pearson bounds at ``confidence``
    (TPR's lower and FPR's upper bound, each one-sided at (1 − confidence) / 2)."""
    fpr, tpr = roc.fpr, roc.tpr
    if confidence is not None:
        tail = (1 - confidence) / 2
        tp, fp = roc.true_positives, roc.false_positives
        tpr = np.where(tp > 0, beta.ppf(tail, tp, roc.positives - tp + 1), 0.0)
        fpr = np.where(fp < roc.negatives, beta.ppf(1 - tail, fp + 1, roc.negatives - fp), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.log(np.maximum(tpr - delta, 0) / fpr)
        backward = np.log(np.maximum(1 - fpr - delta, 0) / (1 - tpr))
    bound = np.nan_to_num(np.maximum(forward, backward), nan=0.0, posinf=np.inf, neginf=0.0)
    return float(max(bound.max(), 0.0))


def downsample(roc: Roc, points: int = ROC_POINTS) -> list[list[float]]:
    """Up to ``points`` [FPR, TPR] pairs, spaced evenly in log FPR so the low-FPR region a log plot shows is kept."""
    if len(roc.fpr) <= points:
        keep = np.arange(len(roc.fpr))
    else:
        floor = max(1.0 / roc.negatives, 1e-6) / 2
        grid = np.geomspace(floor, 1.0, points - 2)
        keep = np.unique(np.r_[0, np.searchsorted(roc.fpr, grid, side="right") - 1, len(roc.fpr) - 1])
    return [[float(roc.fpr[i]), float(roc.tpr[i])] for i in keep]


def summarise(scores: np.ndarray, members: np.ndarray, delta: float = 0.0) -> dict:
    """A test's figures: AUC, TPR at 1 % FPR, ε lower bounds (point and 95 %) at ``delta``, the curve."""
    roc = roc_curve(scores, members)
    point = epsilon_lower_bound(roc, delta)
    return {"auc": auc(roc), "tpr_at_1pct_fpr": tpr_at_fpr(roc), "members": roc.positives,
            "non_members": roc.negatives, "delta": delta,
            "epsilon_lower_bound": None if np.isinf(point) else point,  # None: unbounded on this sample
            "epsilon_lower_bound_95": epsilon_lower_bound(roc, delta, CONFIDENCE), "roc": downsample(roc)}
