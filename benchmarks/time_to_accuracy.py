"""Wall-clock training time of AFL against FedAvg's time to reach its own final accuracy.

Both run through the CLI's own ``run`` with its defaults (FedAvg: 100 rounds, lr 16, chosen on
validation by accuracy_table.py), on the same device, one run at a time and interleaved, so
neither gets a quieter machine. Training time is what the runner's timer calls local (building the
clients: AFL's statistics, FedAvg's models), aggregation and solve; feature extraction (cached),
the centralized reference and the evaluation are not training. FedAvg's clock stops at the first
round whose test accuracy reaches the accuracy of its last round (the per-round test accuracy is
computed outside the clock). Also recorded: the first round, if any, at which FedAvg reaches
AFL's accuracy. Both protocols: plaintext sums (the algorithms' own cost) and pairwise masking
(the deployed default; at the smallest client count only, FedAvg runs 100 masked rounds).

    python benchmarks/time_to_accuracy.py [--clients 20 50 100] [--seeds 3] [--device auto]
Writes benchmarks/results/time_to_accuracy.json and .png.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from secure_afl.config import RunConfig
from secure_afl.results import write_results
from secure_afl.runner import TRAINING_PHASES, PlaintextAggregationWarning, run, training_seconds

RESULTS = Path(__file__).parent / "results"


def measure(clients: int, seed: int, protocol: str, device: str) -> dict:
    common = {"clients": clients, "seed": seed, "protocol": protocol, "device": device}
    afl = run(RunConfig(algorithm="afl", **common))
    fedavg = run(RunConfig(algorithm="fedavg", **common))
    history = fedavg["metrics"]["history"]
    final = history[-1]["accuracy"]
    at_final = next(row for row in history if row["accuracy"] >= final)
    reaching_afl = next((row for row in history if row["accuracy"] >= afl["metrics"]["accuracy"]), None)
    afl_seconds = training_seconds(afl["timings_s"])
    return {
        "clients": clients, "seed": seed, "protocol": protocol,
        "afl_accuracy": afl["metrics"]["accuracy"], "afl_train_s": afl_seconds,
        "afl_timings_s": {phase: afl["timings_s"].get(phase, 0.0) for phase in TRAINING_PHASES},
        "fedavg_final_accuracy": final, "fedavg_rounds": len(history),
        "fedavg_round_at_final": at_final["round"], "fedavg_s_to_final": at_final["train_seconds"],
        "fedavg_train_s": training_seconds(fedavg["timings_s"]),
        "fedavg_round_reaching_afl": None if reaching_afl is None else reaching_afl["round"],
        "ratio_afl_to_fedavg": afl_seconds / at_final["train_seconds"],
        "device_name": afl["environment"]["device_name"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    cells = {}
    for row in rows:
        cells.setdefault((row["protocol"], row["clients"]), []).append(row)
    return [{
        "protocol": protocol, "clients": clients, "runs": len(group),
        "afl_train_s_median": statistics.median(r["afl_train_s"] for r in group),
        "fedavg_s_to_final_median": statistics.median(r["fedavg_s_to_final"] for r in group),
        "ratio_median": statistics.median(r["ratio_afl_to_fedavg"] for r in group),
        "ratio_max": max(r["ratio_afl_to_fedavg"] for r in group),
    } for (protocol, clients), group in sorted(cells.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warnings.simplefilter("ignore", PlaintextAggregationWarning)  # plaintext is one of the two settings measured
    rows = []
    for clients in args.clients:
        protocols = ("plaintext", "mask") if clients == min(args.clients) else ("plaintext",)
        for protocol in protocols:
            for seed in range(args.seeds):
                row = measure(clients, seed, protocol, args.device)
                rows.append(row)
                print(f"K={clients:<4} {protocol:9s} seed={seed}: AFL {row['afl_train_s']:.2f}s "
                      f"({row['afl_accuracy']:.4f}), FedAvg to final {row['fedavg_s_to_final']:.2f}s "
                      f"(round {row['fedavg_round_at_final']}, {row['fedavg_final_accuracy']:.4f}) "
                      f"→ 1/{1 / row['ratio_afl_to_fedavg']:.1f}", flush=True)
    document = {"schema_version": 1, "benchmark": "time_to_accuracy", "rows": rows, "summary": summarise(rows),
                "device_name": rows[0]["device_name"]}
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "time_to_accuracy.json", document, overwrite=True)
    plot(document, RESULTS / "time_to_accuracy.png")


def plot(document: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    summary = document["summary"]
    labels = [f"K={s['clients']}\n{s['protocol']}" for s in summary]
    positions = range(len(summary))
    ax.bar([p - 0.2 for p in positions], [s["afl_train_s_median"] for s in summary], width=0.4, label="AFL (training)")
    ax.bar([p + 0.2 for p in positions], [s["fedavg_s_to_final_median"] for s in summary], width=0.4,
           label="FedAvg (to its final accuracy)")
    for p, s in zip(positions, summary):
        ax.annotate(f"1/{1 / s['ratio_median']:.0f}", (p, s["fedavg_s_to_final_median"]), ha="center", va="bottom")
    ax.set(xticks=list(positions), xticklabels=labels, ylabel="seconds (median)", yscale="log",
           title=f"mnist5k, α = 0.1: {document['device_name']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
