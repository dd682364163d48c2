"""Reading per-client statistics out of a transcript, as a server that sees plaintext messages can.

A round's public layout (recorded from the algorithm's ``RoundSpec``) says which slice of a vector
holds the upper triangle of G, H, n and the class counts, and what G's rows are. Under plaintext
aggregation every client's message is its vector; under masking the server holds uniformly random
words and under HE ciphertexts it cannot open, so the per-client attacks are not applicable there
and say so.

Feature spaces. Rows are the mapped features X (``x``) in AFL and APFL's primary stream, and
DeepAFL's Φ_t in its classifier rounds. Φ_0 = sX when DeepAFL starts from the features themselves
(public: no expansion, s in the layout), so those rows are mapped back to X by dividing by s;
other layers stay in their own space ``phi/t``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from attacks.base import ServerView
from protocols import PROTOCOLS
from protocols.transcript import TranscriptRound
from secure_afl.statistics import Statistics, StatisticsLayout


def round_key(entry: TranscriptRound) -> str:
    """Rounds may share a name (a retried aggregation), so reports key them by index too."""
    return f"{entry.index}:{entry.name}"


def unreadable(entry: TranscriptRound, what: str) -> str:
    """Why the server cannot read each client's ``what`` in a secure round, and the protocol's known leak, if it has
    one (protocols/base.py: approximate CKKS's decryptions), which no attack here exploits: the attacks' verdict
    is about what they read, not a proof that nothing else can be."""
    held = "uniformly random masked words" if entry.protocol == "mask" else "ciphertexts it cannot decrypt without the key"
    reason = f"protocol {entry.protocol}: the server holds only {held} of each client's {what}; only the sum is readable"
    leak = PROTOCOLS[entry.protocol].leak if entry.protocol in PROTOCOLS else None
    return reason if leak is None else f"{reason}. Known leak of this protocol, not attacked here: {leak}"


@dataclass(frozen=True)
class StatisticsRound:
    entry: TranscriptRound
    layout: dict
    space: str  # what the rows of G are, after any public map back to X
    scale: float  # rows of G divided by this are rows of ``space``
    norm: float | None  # the public norm of every row in ``space`` (None: not known)


def statistics_rounds(view: ServerView, rounds: dict[str, str], labels: bool = True) -> Iterator[StatisticsRound]:
    """The rounds whose vectors are packed statistics (with one-hot label targets when ``labels``);
    every other round is noted in ``rounds`` with the reason it is skipped."""
    config = view.config
    for entry in view.rounds():
        layout = entry.spec.get("layout", {})
        if layout.get("kind") == "weighted_parameters":
            rounds[round_key(entry)] = ("carries model parameters [n_k θ_k, n_k], not statistics (gradient inversion, "
                                        "not a closed-form attack, targets these)")
            continue
        if layout.get("kind") != "statistics":
            rounds[round_key(entry)] = "carries a vector whose layout is not statistics"
            continue
        if labels and layout.get("targets") != "labels":
            rounds[round_key(entry)] = f"H holds {layout.get('targets')}, not one-hot labels"
            continue
        yield StatisticsRound(entry, layout, *_space(layout, config))


def _space(layout: dict, config: dict) -> tuple[str, float, float | None]:
    norm = float(config["max_norm"]) if config.get("feature_norm") == "l2" else None
    if layout.get("rows") == "x":
        return "x", 1.0, norm
    if layout.get("rows") == "phi" and layout.get("layer") == 0 and config.get("deep_width") == 0:
        return "x", float(layout["scale"]), norm
    return f"{layout.get('rows')}/{layout.get('layer')}", 1.0, None


class Unreadable(Exception):
    """The round's individual messages cannot be read (masked or encrypted)."""


def client_statistics(item: StatisticsRound) -> dict[int, Statistics]:
    """Every client's statistics in this round, rows already mapped to ``item.space``."""
    entry = item.entry
    if entry.secure:
        raise Unreadable(unreadable(entry, "statistics"))
    return {client: unpack(item, vector) for client, vector in entry.inputs().items()}


def unpack(item: StatisticsRound, vector) -> Statistics:
    """One packed vector of this round (a client's, or the sum) as statistics with rows in ``item.space``.

    A layout that declares ``positions`` P > 1 rows per sample (FedACnnL's patch rows: one per output position of
    an image) is read per sample: H / P holds, per class, the sum of each sample's mean row, and the counts / P
    count samples, so the class-mean, singleton and count attacks read samples there exactly (P is a power of
    two: the division is exact). G stays the Gram of the rows, which no per-sample attack reads."""
    stats = StatisticsLayout(int(item.layout["dim"]), int(item.layout["classes"])).unpack(vector)
    if item.scale != 1.0:
        stats = Statistics(stats.gram / item.scale**2, stats.cross / item.scale, stats.count, stats.class_counts)
    positions = int(item.layout.get("positions", 1))
    if positions != 1:
        stats = Statistics(stats.gram, stats.cross / positions, stats.count // positions,
                           stats.class_counts // positions)
    return stats
