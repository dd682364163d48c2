"""The difference attack: two sums of the same statistic over client sets that differ by one client.

Secure aggregation hides each message but reveals every sum it computes, and a sum minus a sum is
a vector. A server that runs the same aggregation twice — a "retry" after a dropout, a late
arrival, a second attempt with one client missing — gets the missing client's whole vector by
subtraction, under masking and HE alike: the attack reads nothing but the decoded sums. Rounds are
"the same statistic" when their public specs (name, length, bound, layout) and broadcast state
agree, so each client computes the same vector for both.

The defence is on the clients' side: each keeps a ledger of the statistics it released and refuses
a second aggregation of one (protocols/ledger.py), so a transcript of clients with ledgers holds
each statistic once and this attack finds nothing to subtract; the case records the refusals.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator

from attacks.base import ATTACKED, Attack, Reconstruction, ServerView, register
from attacks.statistics.rounds import round_key
from protocols.transcript import TranscriptRound


def statistic_key(entry: TranscriptRound) -> str:
    """Rounds with equal keys ask every client for the same vector."""
    digest = hashlib.sha256(json.dumps(entry.spec, sort_keys=True).encode())
    for name, array in sorted(entry.broadcast.items()):
        digest.update(name.encode() + array.dtype.str.encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()


def same_statistic(view: ServerView) -> list[list[TranscriptRound]]:
    """The transcript's rounds grouped by the statistic they ask for (the difference attack's raw material)."""
    groups: dict[str, list[TranscriptRound]] = defaultdict(list)
    for entry in view.rounds():
        groups[statistic_key(entry)].append(entry)
    return list(groups.values())


@register
class DifferenceAttack(Attack):
    name = "difference"
    threat_model = ("curious server that aggregates the same statistic twice over client sets differing by one client "
                    "(a retried round in which that client drops out, through the protocol's own dropout path); it "
                    "reads only the decoded sums, so secure aggregation (masking or HE) does not stop it")
    metric = "relative_error"
    threshold = 1e-9
    targets = "victims"

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        for entries in same_statistic(view):
            for larger in entries:
                for smaller in entries:
                    missing = set(larger.included) - set(smaller.included)
                    if len(missing) != 1 or not set(smaller.included) < set(larger.included):
                        continue
                    rounds[round_key(larger)] = rounds[round_key(smaller)] = ATTACKED
                    (victim,) = missing
                    yield Reconstruction("contribution", larger.name, victim, "contribution",
                                         larger.total - smaller.total, certified=True)
        for entry in view.rounds():
            rounds.setdefault(round_key(entry), "no other aggregate of the same statistic differs from it by one client")
