"""Simulated dropouts: clients that leave a round at a stage and never send that stage's message.

Every protocol names the stages a client can leave at (``AggregationProtocol.stages``); a job states a
fraction per stage, and each round draws who leaves. Which clients leave is a simulation choice,
not a secret, so numpy's seeded generator is fine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protocols.errors import ParameterError


def check_stages(per_stage: Mapping, stages: Sequence[str]) -> None:
    unknown = set(per_stage) - set(stages)
    if unknown:
        raise ParameterError(f"unknown dropout stages {sorted(unknown)}; stages are {', '.join(stages)}")


def check_dropout_fractions(fractions: Mapping[str, float], stages: Sequence[str]) -> dict[str, float]:
    check_stages(fractions, stages)
    for stage, fraction in fractions.items():
        if not 0 <= fraction < 1:
            raise ParameterError(f"the dropout fraction at stage {stage!r} must be in [0, 1), got {fraction}")
    if sum(fractions.values()) >= 1:
        raise ParameterError("dropout fractions add up to every client; nothing would be left to sum")
    return dict(fractions)


def draw_dropouts(clients: list[int], fractions: Mapping[str, float], seed: int,
                  stages: Sequence[str] | None = None) -> dict[str, frozenset[int]]:
    """At each stage (in protocol order; by default the order of ``fractions``), round(fraction · n) of the
    clients still present leave."""
    rng = np.random.default_rng(seed)
    present, drop = sorted(clients), {}
    for stage in fractions if stages is None else stages:
        count = min(len(present), round(fractions.get(stage, 0.0) * len(clients)))
        leaving = frozenset(int(c) for c in rng.choice(present, size=count, replace=False)) if count else frozenset()
        drop[stage] = leaving
        present = [c for c in present if c not in leaving]
    return drop
