"""A client's ledger of the statistics it has released: the defence against the difference attack.

Why. Secure aggregation reveals every sum it computes. A server that aggregates the same statistic
twice, over client sets that differ by one client (a "retry" in which that client drops out), gets
that client's vector as the difference of the two sums, under masking and HE alike
(attacks/statistics/difference.py). No check inside one round can see this: each round is honest on
its own. So every client keeps a record of what it released and refuses to release the same
statistic into a second aggregation of the same job.

What counts as the same statistic. The server chooses round ids, broadcasts and participants, so
the rule keys on what decides the client's vector, not only on what the server calls the round.
Within one job (the roster digest, which also binds the job's configuration), a client refuses a
round when it has already released an input for

  1. a round of the same name, whatever its broadcast (a retried round with a changed model is still
     the same question about the client's data);
  2. a round with the same non-empty broadcast digest under any name (the same model or state asked
     again under a new round id); rounds without a broadcast are told apart by rules 1 and 3;
  3. a vector equal to this one, bit for bit, under any name and broadcast (the same statistic
     however the server labels it).

The bound and the participants are not part of it: neither changes the client's vector, and the
participants are exactly what the attack varies. The name, broadcast and roster digest are in every
round setup, so each session id binds the statistic as well.

When. Releasing the input is the point of no return. The client checks the ledger when a round
starts (so a refused round fails before any work) and claims the statistic, written and fsynced,
immediately before its masked input or ciphertext leaves it. A round given up before that (a
dropout or abort at the advertise or share stage) spends nothing. A round that fails after it (at
the consistency or unmask stage) spends the statistic: the server holds the masked input, and a
second session would give it a second try at a sum the first one denied it, so that statistic
cannot be retried in the job (a liveness cost, accepted).

Limits. A new job (a roster only the operator issues) starts a new scope: the operator is trusted
not to re-run a job for the server. A vector that differs in its last bit from an earlier one (a
client that adds fresh noise to every release) escapes rule 3; rules 1 and 2 still hold.

File: one per client, in a directory the client owns, UTF-8 JSON lines, append-only, never pickle::

    {"broadcast": "<hex>", "content": "<hex>", "job": "<hex>", "round": "afl/statistics", "session": "<hex>"}

Each line is one write on an O_APPEND descriptor, fsynced (with the directory when the file is new)
before the client answers. A line that does not parse makes the ledger unusable: the client refuses
every round (fails closed) until its operator looks at the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocols.errors import LedgerError, StatisticReusedError
from protocols.terms import EMPTY_BROADCAST, RoundTerms

DOMAIN = b"secure-afl/statistic/v1"
FIELDS = ("broadcast", "content", "job", "round", "session")


@dataclass(frozen=True)
class Statistic:
    """What a client releases in a round, as its ledger names it (hex digests)."""

    job: str  # the roster's digest
    round_id: str
    broadcast: str
    content: str  # SHA-256 of the job and the float64 vector

    @classmethod
    def of(cls, job: bytes, terms: RoundTerms, vector: np.ndarray) -> Statistic:
        content = hashlib.sha256(DOMAIN + job + np.ascontiguousarray(vector, dtype=np.float64).tobytes())
        return cls(job.hex(), terms.round_id, terms.broadcast.hex(), content.hexdigest())

    def repeats(self, earlier: Statistic) -> str | None:
        """Why releasing this statistic after ``earlier`` would aggregate the same statistic twice; None if not."""
        if earlier.job != self.job:
            return None
        if earlier.round_id == self.round_id:
            return f"it already released an input for round {self.round_id!r}"
        if earlier.broadcast == self.broadcast and self.broadcast != EMPTY_BROADCAST.hex():
            return f"round {self.round_id!r} carries the broadcast of round {earlier.round_id!r}, already contributed to"
        if earlier.content == self.content:
            return f"round {self.round_id!r} asks for the vector it already released in round {earlier.round_id!r}"
        return None


class ContributionLedger:
    """One client's append-only record of released statistics; a new object on the same file is the same record."""

    def __init__(self, path: str | Path, owner: str = "the client"):
        self.path = Path(path)
        self.owner = owner  # how refusals name the client

    @classmethod
    def in_directory(cls, directory: str | Path, client: int) -> ContributionLedger:
        return cls(Path(directory) / f"client-{int(client)}.jsonl", f"client {int(client)}")

    def entries(self) -> list[Statistic]:
        """Every statistic released so far, read from disk each time (so a restarted client sees them)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"the contribution ledger {self.path} cannot be read ({exc}); refusing the round") from exc
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
                if sorted(record) != list(FIELDS) or not all(isinstance(record[f], str) for f in FIELDS):
                    raise ValueError(f"fields {sorted(record)}")
            except (ValueError, TypeError) as exc:
                raise LedgerError(f"line {number} of the contribution ledger {self.path} is malformed ({exc}); "
                                  "refusing every round until it is repaired") from exc
            entries.append(Statistic(record["job"], record["round"], record["broadcast"], record["content"]))
        return entries

    def check(self, statistic: Statistic) -> None:
        """Refuse (typed) a statistic that repeats one already released in this job."""
        for earlier in self.entries():
            reason = statistic.repeats(earlier)
            if reason is not None:
                raise StatisticReusedError(f"{self.owner} refuses round {statistic.round_id!r}: {reason} in this job, and "
                                           "two sums of one statistic over different clients reveal a client's vector")

    def claim(self, statistic: Statistic, session: bytes) -> None:
        """Check, then record the release durably; call it last before the input leaves the client."""
        self.check(statistic)
        line = json.dumps({"broadcast": statistic.broadcast, "content": statistic.content, "job": statistic.job,
                           "round": statistic.round_id, "session": session.hex()}, sort_keys=True) + "\n"
        new = not self.path.exists()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                data = memoryview(line.encode("utf-8"))
                while data:
                    data = data[os.write(descriptor, data):]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if new:
                _fsync_directory(self.path.parent)
        except OSError as exc:
            raise LedgerError(f"the contribution ledger {self.path} cannot be written ({exc}); refusing to release "
                              "an input it could not record") from exc


def _fsync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable too."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
