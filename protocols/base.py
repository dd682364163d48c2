"""The protocol interface: a round takes each client's flat float64 vector and returns their sum.

Callers (the federation runner, benchmarks, anyone summing FL vectors) use only ``aggregate``.
Contributions are checked here, once for every protocol, before any protocol work starts: same
length, finite float64, every entry within the round's declared public bound. A protocol either
returns the exact sum (to its encoding's stated precision) or raises. A protocol made with
``record=True`` also returns the server's view of each round (``RoundResult.view``) for a
transcript; nothing is kept between rounds, so recording never grows with the run.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from protocols.errors import InvalidContributionError, ParameterError
from protocols.transcript import RoundView


@dataclass(frozen=True)
class RoundResult:
    total: np.ndarray
    upload_bytes: dict[int, int]  # what each client sent during the round
    download_bytes: dict[int, int]  # what the protocol sent each client during the round
    included: frozenset[int] | None = None  # clients whose vectors are in the total; None: all of them
    details: dict = field(default_factory=dict)  # protocol-specific report (encoding, parameters, per-stage costs)
    view: RoundView | None = None  # what the server saw, when the protocol records


def check_vector(vector: np.ndarray, bound: float, who: str = "a vector") -> None:
    """One contribution: a 1-D float64 array, finite, every entry within ±bound (NaN fails the max)."""
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float64 or vector.ndim != 1:
        raise InvalidContributionError(f"{who}: a contribution must be a 1-D float64 numpy array")
    peak = max(float(vector.max()), -float(vector.min())) if vector.size else 0.0
    if not math.isfinite(peak):
        raise InvalidContributionError(f"{who}: the vector contains NaN or Inf")
    if peak > bound:
        raise InvalidContributionError(
            f"{who}: an entry of magnitude {peak:.6g} exceeds the declared public bound {bound:.6g}"
        )


def check_contributions(contributions: Mapping[int, np.ndarray], bound: float) -> int:
    """Validate a round's inputs; returns the common vector length."""
    if not contributions:
        raise InvalidContributionError("a round needs at least one client's vector")
    if not (np.isfinite(bound) and bound > 0):
        raise InvalidContributionError(f"the declared bound must be a positive finite number, got {bound}")
    for client, vector in contributions.items():
        check_vector(vector, bound, f"client {client}")
    lengths = {vector.shape[0] for vector in contributions.values()}
    if len(lengths) != 1:
        raise InvalidContributionError(f"clients sent vectors of different lengths {sorted(lengths)}")
    return lengths.pop()


class AggregationProtocol(ABC):
    """Sums clients' vectors; with ``record`` each result carries what the server saw."""

    name: ClassVar[str]
    secure: ClassVar[bool]  # False: the server sees individual contributions
    exact: ClassVar[bool] = True  # False: the sum carries an approximation error beyond the fixed-point bound
    stages: ClassVar[tuple[str, ...]] = ("input",)  # where a client can drop out of a round

    def __init__(self, record: bool = False):
        self.record = record

    def prepare(self, clients: int, bound: float) -> None:
        """Refuse, before any data exists, a round shape this protocol cannot run (encoding, parameters)."""

    def aggregate(self, round_id: str, contributions: Mapping[int, np.ndarray], bound: float,
                  drop: Mapping[str, Iterable[int]] | None = None) -> RoundResult:
        """The sum of the contributions. ``drop`` names clients that leave the round at a stage (a simulated
        dropout, on top of any the protocol draws itself); their vectors are not in the sum."""
        length = check_contributions(contributions, bound)
        return self._aggregate(round_id, dict(contributions), bound, length, self._check_drop(drop, contributions))

    def _check_drop(self, drop, contributions) -> dict[str, frozenset[int]]:
        drop = {stage: frozenset(int(c) for c in ids) for stage, ids in (drop or {}).items()}
        unknown = set(drop) - set(self.stages)
        if unknown:
            raise ParameterError(f"protocol {self.name!r} has no stage {sorted(unknown)}; its stages are {', '.join(self.stages)}")
        leaving = [c for ids in drop.values() for c in ids]
        strangers = set(leaving) - set(contributions)
        if strangers:
            raise ParameterError(f"clients {sorted(strangers)} cannot drop: they are not in the round")
        if len(set(leaving)) != len(leaving):
            raise ParameterError("a client can drop out of a round only once")
        return drop

    @abstractmethod
    def _aggregate(self, round_id: str, contributions: dict[int, np.ndarray], bound: float, length: int,
                   drop: dict[str, frozenset[int]]) -> RoundResult:
        """Run the round on validated inputs."""
