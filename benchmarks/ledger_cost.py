"""What the clients' contribution ledgers cost, and what they stop: the difference attack before and after.

Cost: per client and round, the statistic's digest (SHA-256 over the vector), the check against
every earlier entry (the file is read each time, so a restarted client sees them) and the fsynced
append, for vectors of the small attack job's length and of the default AFL job's, with ledgers
already holding 1 to 1,000 entries; and a whole masking round of K clients with and without
ledgers. Effect: the difference attack's retrying server on the small attack job (mnist5k, K = 20,
128-wide tanh buffer) under mask and he-bfv, with the clients' ledgers and without. Writes
benchmarks/results/ledger_cost.json.

    python benchmarks/ledger_cost.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from attacks.suite import attack_run
from protocols import ContributionLedger, MaskingProtocol, Statistic
from protocols.terms import RoundTerms
from secure_afl.config import RunConfig
from secure_afl.device import resolve_device
from secure_afl.results import environment, write_results
from secure_afl.runner import PlaintextAggregationWarning
from secure_afl.statistics import StatisticsLayout

RESULTS = Path(__file__).parent / "results"
SMALL = replace(RunConfig(), buffer_width=128, buffer_activation="tanh")  # the attack tests' job
LENGTHS = {"small attack job (d = 128)": StatisticsLayout(128, 10).length,
           "default AFL job (d = 1280)": StatisticsLayout(1280, 10).length}
ENTRIES = (1, 10, 100, 1000)


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def ledger_row(length: int, entries: int, repeats: int, directory: Path) -> dict:
    """Digest, check and claim for one client whose ledger already holds ``entries`` statistics of the job."""
    job, rng = b"j" * 32, np.random.default_rng(0)
    ledger = ContributionLedger(directory / f"ledger-{length}-{entries}.jsonl")
    for r in range(entries):
        ledger.claim(Statistic.of(job, RoundTerms(f"earlier/{r}", 1.0), np.full(4, float(r))), b"s" * 32)
    digest, check, claim = [], [], []
    for r in range(repeats):
        vector = rng.uniform(-1, 1, length)
        start = time.perf_counter()
        released = Statistic.of(job, RoundTerms(f"round/{r}", 1.0), vector)
        digest.append(time.perf_counter() - start)
        start = time.perf_counter()
        ledger.check(released)
        check.append(time.perf_counter() - start)
        start = time.perf_counter()
        ledger.claim(released, b"s" * 32)
        claim.append(time.perf_counter() - start)
    return {"length": length, "entries_before": entries, "digest_ms": median_ms(digest), "check_ms": median_ms(check),
            "claim_ms": median_ms(claim), "per_round_ms": median_ms(digest) + median_ms(check) + median_ms(claim)}


def round_row(clients: int, length: int, repeats: int) -> dict:
    """A masking round of ``clients`` clients with and without their ledgers (medians over fresh rounds, the two
    kinds alternating so that load on the machine hits both alike)."""
    rng = np.random.default_rng(1)
    protocols = {"without_ledger": MaskingProtocol(ledger=False), "with_ledger": MaskingProtocol()}
    samples = {kind: [] for kind in protocols}
    for r in range(repeats):
        vectors = {c: rng.uniform(-1, 1, length) for c in range(clients)}
        for kind, protocol in protocols.items():
            start = time.perf_counter()
            protocol.aggregate(f"round/{r}", vectors, 1.0)
            samples[kind].append(time.perf_counter() - start)
    seconds = {kind: statistics.median(values) for kind, values in samples.items()}
    return {"clients": clients, "length": length, "repeats": repeats, **seconds,
            "overhead": seconds["with_ledger"] / seconds["without_ledger"] - 1}


def attack_row(protocol: str, defended: bool) -> dict:
    document, _ = attack_run(["difference"], replace(SMALL, protocol=protocol), victims=(3, 11), defended=defended)
    report = document["attacks"]["difference"]
    return {"protocol": protocol, "defended": defended, "applicable": report["applicable"],
            "recovered_fraction": report["metrics"]["recovered_fraction"], "targets": report["metrics"]["targets"],
            "aggregations_run": document["cases"]["retry"]["rounds"],
            "refusals": [(r["victim"], r["error"]) for r in report["refusals"]], "reason": report["reason"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore", PlaintextAggregationWarning)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ledger-cost-") as scratch:
        ledgers = [{"job": name, **ledger_row(length, entries, args.repeats, Path(scratch))}
                   for name, length in LENGTHS.items() for entries in ENTRIES]
    for row in ledgers:
        print(f"{row['job']:28s} {row['entries_before']:5d} earlier: digest {row['digest_ms']:.3f} ms, check "
              f"{row['check_ms']:.3f} ms, fsynced claim {row['claim_ms']:.3f} ms", flush=True)
    rounds = [round_row(20, LENGTHS["small attack job (d = 128)"], args.repeats)]
    print(f"masking round K = 20: {rounds[0]['without_ledger']:.3f} s without ledgers, {rounds[0]['with_ledger']:.3f} s "
          f"with ({100 * rounds[0]['overhead']:+.1f} %)", flush=True)
    attacks = [attack_row(protocol, defended) for protocol in ("mask", "he-bfv") for defended in (False, True)]
    for row in attacks:
        print(f"difference attack, {row['protocol']:6s} {'with' if row['defended'] else 'without'} ledgers: recovered "
              f"{row['recovered_fraction']}, refusals {row['refusals']}", flush=True)
    document = {"schema_version": 1, "benchmark": "ledger_cost", "repeats": args.repeats, "ledger": ledgers,
                "rounds": rounds, "difference_attack": attacks, "total_seconds": time.perf_counter() - started,
                "environment": environment(resolve_device("cpu"), SMALL.seed)}
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "ledger_cost.json", document, overwrite=True)


if __name__ == "__main__":
    main()
