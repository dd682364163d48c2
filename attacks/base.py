"""The attack side's contract: an attack sees a server view, returns reconstructions, and never ground truth.

Following breaching's split, three things are kept apart:

- the **case** (attacks/case.py): which run, protocol and server behaviour; it produces a transcript
  and, separately, the ground truth;
- the **attack** (this module's ``Attack``): a function of a ``ServerView`` only — the transcript
  the server recorded and the public knowledge in it. The view type holds nothing else, and the
  attack modules may not import the case, the evaluator, the data sets or the runner (a test walks
  their imports), so an attack cannot reach ground truth even by accident;
- the **evaluator** (attacks/evaluation.py): matches reconstructions to ground truth and scores
  them, with the attack's threshold and a baseline that guesses without the transcript beside
  every figure.

An attack that cannot work on a view (every individual message masked or encrypted) says so:
``NotApplicable`` with the reason, and the evaluator scores it as recovering nothing. It never
presents noise as a reconstruction.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from protocols.transcript import Transcript, TranscriptRound


class NotApplicable(Exception):
    """The attack cannot work on this view (or this round); the message says why."""


@dataclass(frozen=True)
class ServerView:
    """Everything an attack may use: the transcript (what the server received, round by round) and the
    public knowledge recorded in it (the job's public configuration, dimensions, client ids)."""

    transcript: Transcript

    @property
    def public(self) -> dict:
        return self.transcript.public

    @property
    def config(self) -> dict:
        return self.transcript.public["config"]

    @classmethod
    def load(cls, path) -> ServerView:
        return cls(Transcript.load(path))

    def rounds(self) -> Iterator[TranscriptRound]:
        return iter(self.transcript.rounds)


@dataclass(frozen=True)
class Reconstruction:
    """One thing an attack claims to have recovered, and where from.

    ``space`` says what ``value`` lives in: ``x`` (the mapped features statistics are built from),
    ``backbone`` (raw backbone features), ``phi/T`` (DeepAFL's layer-T features), ``counts`` (a
    client's class counts) or ``contribution`` (a client's whole vector for ``round``).
    ``certified``: the attack can prove from the transcript alone that the value is exact.
    """

    kind: str  # feature, class-mean, counts, contribution
    round: str
    client: int
    space: str
    value: np.ndarray
    label: int | None = None
    certified: bool = False


@dataclass
class AttackOutput:
    attack: str
    applicable: bool
    reason: str  # why not applicable (or which rounds were skipped and why)
    threat_model: str
    items: list[Reconstruction] = field(default_factory=list)
    rounds: dict[str, str] = field(default_factory=dict)  # round → "attacked" or why it was skipped
    seconds: float = 0.0


class Attack(ABC):
    """A registered attack: ``reconstruct`` maps a server view to reconstructions, round by round."""

    name: ClassVar[str]
    threat_model: ClassVar[str]
    metric: ClassVar[str]  # how the evaluator scores a reconstruction: cosine, exact, relative_error
    threshold: ClassVar[float]  # a target counts as recovered at or beyond this value of the metric
    targets: ClassVar[str]  # what the evaluator counts as targets (see attacks/evaluation.py)

    def run(self, view: ServerView) -> AttackOutput:
        start = time.perf_counter()
        output = AttackOutput(self.name, False, "", self.threat_model)
        try:
            output.items = list(self.reconstruct(view, output.rounds))
            output.applicable = ATTACKED in output.rounds.values()
            if not output.applicable:
                output.reason = "; ".join(f"{name}: {why}" for name, why in output.rounds.items()) \
                    or "the transcript holds no round this attack can use"
        except NotApplicable as exc:
            output.reason = str(exc)
            output.items = []
        output.seconds = time.perf_counter() - start
        return output

    @abstractmethod
    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        """Yield reconstructions; record in ``rounds`` each round attacked (ATTACKED) or why it was skipped.
        Raise NotApplicable when nothing in the view can be attacked."""


ATTACKED = "attacked"

ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: the CLI, tests and benchmarks find attacks by name here."""
    if cls.name in ATTACKS:
        raise ValueError(f"an attack named {cls.name!r} is already registered")
    ATTACKS[cls.name] = cls
    return cls
