"""Every active-server attack of attacks/protocol run twice on a small job, as rows for the privacy report.

The report's claim "secure aggregation reveals only the sum" rests on these runs, so they are data, not test
internals: once against a double that lacks the defence the attack targets (attacks/protocol/doubles.py), where
the attack must rebuild the victim's input (which shows it is real), once against the shipped code, where it must
meet typed refusals. The staging is the tests' own (attacks/protocol/scenarios.py); the victim's true input is
read only here, after the attack, to say whether what came back is exact.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from attacks.protocol import doubles, he, masking, scenarios
from attacks.protocol.jobs import BOUND, HEJob, MaskingJob
from attacks.protocol.outcome import Outcome
from protocols.he import HEClient, HEKeyHolder
from protocols.he.session import PublicSession
from protocols.masking import MaskingClient, MaskingOptions

WORDS = "the victim's fixed-point input"
LARGEST = "the victim's largest |value|"
SERVER_ROSTER = "a roster the server wrote"
OPERATOR_ROSTER = "the operator's roster"
BISECTION_ROUNDS = 64  # more than float64 bisection needs to stop on the exact value (about 55)


@dataclass(frozen=True)
class Case:
    """One attack in one setting. ``run(roles)`` stages it with ``double`` or ``shipped`` as the parties' code and
    returns the outcome with the victim's true input. Roles are a class, a named roster, a context loader, or a
    pair: (the other clients' class, the victim's) under masking, (the clients' class, the key holder's) under HE."""

    driver: Callable[..., Outcome]
    variant: str
    double: object
    shipped: object
    defence: str  # what the shipped code checks that stops the attack
    run: Callable[[object], tuple[Outcome, np.ndarray]]
    target: str = WORDS

    @property
    def name(self) -> str:
        """The driver as ``module.function``, e.g. ``masking.restricted_view``."""
        return f"{self.driver.__module__.rsplit('.', 1)[-1]}.{self.driver.__name__}"


def _masking_round(driver, roles, **job) -> tuple[Outcome, np.ndarray]:
    """``roles``: (the other clients' class, the victim's class); the victim is client 0."""
    others, victim = roles
    staged = scenarios.job_with(others, victim, **job)
    return driver(staged.server, staged.clients, 0), scenarios.victim_words(staged)


def _job_first(stage, roles) -> tuple[Outcome, np.ndarray]:
    job, outcome = stage(roles)
    return outcome, scenarios.victim_words(job)


def _bound_oracle(client_class) -> tuple[Outcome, np.ndarray]:
    job = MaskingJob(n=5)
    outcome = masking.bound_oracle(scenarios.bound_probe(job, client_class), BOUND, BISECTION_ROUNDS)
    return outcome, np.array([np.abs(job.vectors[0]).max()])


def _small_round(client_class, colluders, withheld=()) -> tuple[Outcome, np.ndarray]:
    _, outcome, words = scenarios.small_round(client_class, colluders, withheld)
    return outcome, words


def _key_substitution(scheme, load) -> tuple[Outcome, np.ndarray]:
    job = HEJob(scheme=scheme)
    return scenarios.key_substitution_round(job, load), job.encoding.encode(job.vectors[1])


def _he_small_round(roles, colluders, participants=None) -> tuple[Outcome, np.ndarray]:
    client_class, holder_class = roles
    return scenarios.he_small_round(client_class, holder_class, colluders, participants)


QUORUM = "the consistency round: a client reveals only under survivor sets that a quorum q of clients signed"
MINIMUM = "the job's minimum m: a client refuses a setup or survivor set of fewer than m clients"
HE_MINIMUM = ("the job's minimum m: the client refuses a setup of fewer than m clients, the key holder decrypts no "
              "sum of fewer than m verified clients")
ORACLE = ("the key holder decrypts once per round it opened, a sum of at least m inputs it verified itself "
          "(signed, for this session)")
MASKED = (MaskingClient, MaskingClient)
SHIPPED_HE = (HEClient, HEKeyHolder)
NO_MINIMUM_HE = (doubles.NoMinimumHEClient, doubles.NoMinimumKeyHolder)

CASES = (
    Case(masking.restricted_view, "complete graph, n = 9, t = 5, m = 2", (doubles.NoConsistencyClient, MaskingClient),
         MASKED, QUORUM, partial(_masking_round, masking.restricted_view, n=9,
                                 options=MaskingOptions(threshold=5, min_clients=2))),
    Case(masking.restricted_view, "SecAgg+, n = 40, k = 10", (doubles.PreIssueClient, MaskingClient), MASKED,
         QUORUM + "; a neighbour reveals nothing once too few of its share holders survive",
         partial(_masking_round, masking.restricted_view, n=40, options=MaskingOptions(neighbours=10))),
    Case(masking.neighbourhood_wipe, "SecAgg+, n = 30, k = 10, m = 2", (doubles.NoQuorumClient, MaskingClient), MASKED,
         "a client reveals nothing once too few of its own share holders survive, nor without a quorum's certificate",
         partial(_masking_round, masking.neighbourhood_wipe, n=30,
                 options=MaskingOptions(neighbours=10, min_clients=2))),
    Case(masking.split_model, "n = 6, the others' update known (zero)", doubles.IgnoresBroadcastClient, MaskingClient,
         "the setup carries the digest of the broadcast model; a client refuses one other than the model it received",
         partial(_job_first, scenarios.split_model_round)),
    Case(masking.bound_oracle, f"at most {BISECTION_ROUNDS} fresh rounds", doubles.ServerBoundClient, MaskingClient,
         "the bound and fraction bits are the job's public ones, never the setup's: any other is refused whatever the "
         "data", _bound_oracle, LARGEST),
    Case(masking.small_round, "round of 2: victim + 1 colluder (m = 7)", doubles.NoMinimumClient, MaskingClient,
         MINIMUM, partial(_small_round, colluders=1)),
    Case(masking.small_round, "round of m − 1 = 6: victim + 5 colluders", doubles.NoMinimumClient, MaskingClient,
         MINIMUM, partial(_small_round, colluders=5)),
    Case(masking.small_round, "round of m = 7, the 2 honest clients claimed dropped", doubles.NoMinimumClient,
         MaskingClient, MINIMUM + " (checked again at signing)", partial(_small_round, colluders=4, withheld=(5, 6))),
    Case(masking.survivor_and_dropped, "n = 10", (doubles.NoSetChecksClient, MaskingClient), MASKED,
         "survivor sets are checked whole: no client is both a survivor and dropped",
         partial(_masking_round, masking.survivor_and_dropped, n=10)),
    Case(masking.split_views, "SecAgg+, n = 30, k = 10, t = 8, 5 colluding neighbours", doubles.NoCertificateClient,
         MaskingClient, QUORUM + " (two conflicting sets cannot both gather q signatures while colluders < 2q − n)",
         partial(_job_first, scenarios.split_views_round)),
    Case(masking.replayed_unmask, "n = 10", (doubles.ReplayableClient, MaskingClient), MASKED,
         "a client answers one unmask request per round, then forgets its shares",
         partial(_masking_round, masking.replayed_unmask, n=10)),
    Case(masking.substituted_keys, "n = 10", (MaskingClient, doubles.NoAdvertCheckClient), MASKED,
         "every key advertisement is signed by the roster's identity key of its sender",
         partial(_masking_round, masking.substituted_keys, n=10)),
    Case(masking.sybil_isolation, "n = 10, 9 Sybils", SERVER_ROSTER, OPERATOR_ROSTER,
         "the victim holds the operator's roster: a setup naming another roster is refused",
         lambda roster: _job_first(scenarios.sybil_round, roster == SERVER_ROSTER)),
    Case(he.key_substitution, "BFV", doubles.unverified_context, PublicSession.load,
         "the public context must be signed by the roster's key holder", partial(_key_substitution, "bfv")),
    Case(he.key_substitution, "CKKS", doubles.unverified_context, PublicSession.load,
         "the public context must be signed by the roster's key holder", partial(_key_substitution, "ckks")),
    *(Case(he.decryption_oracle, how, doubles.ServerSumKeyHolder, HEKeyHolder, ORACLE,
           partial(scenarios.oracle_round, index=index))
      for index, how in enumerate(("minted setup", "replayed input", "too few clients"))),
    Case(he.small_round, "round of 2: victim + 1 colluder (m = 5)", NO_MINIMUM_HE, SHIPPED_HE, HE_MINIMUM,
         partial(_he_small_round, colluders=1)),
    Case(he.small_round, "round of m − 1 = 4: victim + 3 colluders", NO_MINIMUM_HE, SHIPPED_HE, HE_MINIMUM,
         partial(_he_small_round, colluders=3)),
    Case(he.small_round, "m = 5 named, the 2 honest clients claimed dropped", (HEClient, doubles.NoMinimumKeyHolder),
         SHIPPED_HE, "the key holder sums only verified inputs and decrypts no sum of fewer than m; the client cannot "
         "tell a dropout", partial(_he_small_round, colluders=2, participants=[1, 2, 3, 4, 5])),
)


def active_server_outcomes(progress: bool = False) -> list[dict]:
    """One JSON-ready row per case of ``CASES`` (``progress``: a line per case on stderr)."""
    rows = []
    for index, case in enumerate(CASES):
        if progress:
            print(f"[{index + 1}/{len(CASES)}] {case.name}: {case.variant}", file=sys.stderr, flush=True)
        rows.append(outcome_row(case))
    return rows


def outcome_row(case: Case) -> dict:
    """The attack, its threat model and parameters (both runs stage the same job; the parameters are those of the
    run against the double, which went through every stage), and its outcome against the double and against the
    shipped code."""
    leaky, truth = case.run(case.double)
    refused, shipped_truth = case.run(case.shipped)
    finding = re.match(r"finding (\d+)", refused.attack)
    return {
        "attack": case.name, "name": refused.attack, "variant": case.variant,
        "finding": int(finding.group(1)) if finding else None, "threat_model": refused.threat_model,
        "parameters": _plain(leaky.parameters), "target": case.target,
        "without_defence": {"runs": _roles(case.double), "lacks": _lacks(case.double), **_summary(leaky, truth)},
        "shipped": {"runs": _roles(case.shipped), "defence": case.defence, **_summary(refused, shipped_truth)},
    }


def _summary(outcome: Outcome, truth: np.ndarray) -> dict:
    """Whether anything came back and whether it is the victim's input bit for bit; who refused, by error class
    (bound oracle: one refusal per probe round, all from the victim)."""
    first = min(outcome.refusals, default=None)
    return {"leaked": outcome.leaked, "exact": outcome.leaked and bool(np.array_equal(outcome.recovered, truth)),
            "refused": len(outcome.refusals),
            "refusals": dict(Counter(type(error).__name__ for error in outcome.refusals.values())),
            "example": None if first is None else f"{first}: {outcome.refusals[first]}",
            "notes": _plain(outcome.notes)}


def _parts(roles) -> list:
    parts = list(roles) if isinstance(roles, tuple) else [roles]
    return list(dict.fromkeys(parts))


def _roles(roles) -> str:
    return " + ".join(p if isinstance(p, str) else p.__qualname__ for p in _parts(roles))


def _lacks(roles) -> str:
    """The first paragraph of each double's docstring: the defence it was built without."""
    removed = [p for p in _parts(roles) if not isinstance(p, str) and p.__module__ == doubles.__name__]
    return " / ".join(f"{p.__name__}: {inspect.getdoc(p).split(chr(10) + chr(10))[0].replace(chr(10), ' ')}"
                      for p in removed) or "the victim accepts " + _roles(roles)


def _plain(value):
    """JSON-ready copies of parameters and notes (tuples → lists, numpy scalars → Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["CASES", "Case", "active_server_outcomes", "outcome_row"]
