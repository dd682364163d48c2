"""The membership attack: candidate records in, one score per record and test out, for each target asked.

Threat model: an honest-but-curious server (or anyone holding the transcript) that also holds
records it wonders about and public records of the same distribution. It asks whether a record is
one of a client's rows (when it can read each client's statistics, under plaintext) or one of the
rows of all the round's clients (when it reads only their sum, under mask or HE: the union). The
evaluator hands it a ``Challenge`` — the candidates' features and labels, the questions and the
public reference rows — and keeps which candidates are members; the attack sees the transcript and
the challenge only.

Every test reads the first statistics round of the features X (the one AFL solves its model from).
Tests that cannot run on a target say why instead of guessing (the range test on a full-rank
aggregate, LiRA on a model the transcript does not determine).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from attacks.base import ATTACKED, NotApplicable, ServerView, register
from attacks.membership.model import lira_score, released_model
from attacks.membership.statistics import STATISTICS_TESTS, Reference, Release, Unanswerable
from attacks.statistics.closed_form import counts_from_statistics
from attacks.statistics.rounds import (
    StatisticsRound, Unreadable, client_statistics, round_key, statistics_rounds, unpack,
)

UNION = "union"  # the target "some client of the round": the rows behind the aggregate
TESTS = (*STATISTICS_TESTS, "lira")
THREAT_MODEL = ("honest-but-curious server holding the transcript, candidate records (features and labels) and "
                "public reference records of the same distribution disjoint from them; asks whether a candidate is "
                "one of a client's rows (readable per-client statistics) or of the round's clients (the aggregate)")


@dataclass(frozen=True)
class Challenge:
    """What the evaluator hands the attack: candidates (no membership), questions, public reference rows."""

    x: np.ndarray  # candidate features, in the statistics' space X
    labels: np.ndarray
    questions: dict[int | str, np.ndarray]  # target (a client id, or UNION) → indices of the candidates asked about
    reference: Reference


@dataclass
class MembershipOutput:
    attack: str
    applicable: bool
    reason: str
    threat_model: str
    scores: dict[str, dict[int | str, np.ndarray]] = field(default_factory=dict)  # test → target → scores
    skipped: dict[str, str] = field(default_factory=dict)  # "test @ target" → why it was not answered
    rounds: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def release_round(view: ServerView, rounds: dict[str, str]) -> StatisticsRound:
    """The first labelled statistics round of X; later ones are noted as not read."""
    chosen = None
    for item in statistics_rounds(view, rounds):
        if item.space != "x":
            rounds[round_key(item.entry)] = f"its rows are {item.space}, not the candidates' features X"
        elif chosen is not None:
            rounds[round_key(item.entry)] = f"membership reads the first statistics round of X ({chosen.entry.name})"
        else:
            chosen = item
    if chosen is None:
        raise NotApplicable("the transcript holds no statistics round of the features X with label targets")
    return chosen


def _release(stats, item: StatisticsRound) -> Release:
    return Release(stats, counts_from_statistics(stats, bool(item.layout.get("counts")))[0])


@register
class MembershipAttack:
    """Not a reconstruction: ``run`` takes a challenge besides the view and returns scores, not values."""

    name: ClassVar[str] = "membership"
    threat_model: ClassVar[str] = THREAT_MODEL
    metric: ClassVar[str] = "auc"
    threshold: ClassVar[float] = 0.01  # the FPR at which the TPR is reported (LiRA's convention)
    targets: ClassVar[str] = "membership"

    def run(self, view: ServerView, challenge: Challenge) -> MembershipOutput:
        start = time.perf_counter()
        output = MembershipOutput(self.name, False, "", self.threat_model)
        try:
            self._score(view, challenge, output)
            output.applicable = any(output.scores.values())
            if not output.applicable:
                output.reason = "; ".join(f"{key}: {why}" for key, why in output.skipped.items())
        except NotApplicable as exc:
            output.reason = str(exc)
        output.seconds = time.perf_counter() - start
        return output

    def _score(self, view: ServerView, challenge: Challenge, output: MembershipOutput) -> None:
        item = release_round(view, output.rounds)
        output.rounds[round_key(item.entry)] = ATTACKED
        releases: dict[int | str, Release] = {}
        clients = [t for t in challenge.questions if t != UNION]
        if clients:
            try:
                per_client = client_statistics(item)
                releases.update({k: _release(per_client[k], item) for k in clients if k in per_client})
                for k in set(clients) - set(per_client):
                    output.skipped[f"all tests @ client {k}"] = "the client sent nothing in this round"
            except Unreadable as exc:
                output.skipped["all tests @ clients"] = str(exc)
        total = unpack(item, item.entry.total) if UNION in challenge.questions else None
        if total is not None:
            releases[UNION] = _release(total, item)
        gamma = float(view.config.get("gamma", 0.0))
        for target, release in releases.items():
            asked = challenge.questions[target]
            z, labels = challenge.x[asked], challenge.labels[asked]
            for test, score in STATISTICS_TESTS.items():
                try:
                    output.scores.setdefault(test, {})[target] = score(release, z, labels, challenge.reference, gamma)
                except Unanswerable as exc:
                    output.skipped[f"{test} @ {_target_name(target)}"] = str(exc)
        if total is not None:
            self._lira(view, challenge, total, gamma, output)

    @staticmethod
    def _lira(view: ServerView, challenge: Challenge, total, gamma: float, output: MembershipOutput) -> None:
        if view.config.get("algorithm") != "afl":
            output.skipped[f"lira @ {UNION}"] = (f"the released model of {view.config.get('algorithm')} is not "
                                                 "the ridge on the aggregate of X")
            return
        asked = challenge.questions[UNION]
        try:
            weights = released_model(total, view.config)
            output.scores["lira"] = {UNION: lira_score(weights, challenge.x[asked], challenge.labels[asked],
                                                       challenge.reference, gamma)}
        except Unanswerable as exc:
            output.skipped[f"lira @ {UNION}"] = str(exc)


def _target_name(target: int | str) -> str:
    return UNION if target == UNION else f"client {target}"
