"""What a curious server recovers from AFL clients' statistics, across label skew and client counts.

For each protocol, client count K and Dirichlet α on mnist5k (and the shipped CIFAR-10 sample
images with a few clients): the fraction of clients with at least one singleton, the fraction of
all training samples recovered exactly (cosine ≥ 0.9999 by the singleton or gram attack) and
identified in the candidate pool, the gram attack's recovery at its 0.95 threshold by class size,
the baselines, and the wall time of the whole attack suite. Under masking every per-client attack
is not applicable and recovers nothing, which the sweep measures rather than assumes. Writes
benchmarks/results/attack_sweep.json and .png.

    python benchmarks/attack_sweep.py [--scale 2] [--protocols plaintext mask] [--clients 10 20 50 100]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from attacks.suite import attack_run
from secure_afl.config import RunConfig
from secure_afl.results import write_results
from secure_afl.runner import PlaintextAggregationWarning

RESULTS = Path(__file__).parent / "results"
ALPHAS = (0.05, 0.1, 0.5, 1.0, 100.0)
ATTACKS = ["singleton", "counts", "class-means", "gram"]
EXACT = 0.9999


def sweep_row(config: RunConfig) -> dict:
    start = time.perf_counter()
    document, _ = attack_run(ATTACKS, config)
    wall = time.perf_counter() - start
    reports = document["attacks"]
    singles, gram = reports["singleton"], reports["gram"]
    samples = len(gram["per_target"])
    exact = {row["sample"] for report in (singles, gram) for row in report["per_target"]
             if row["score"] is not None and row["score"] >= EXACT}
    identified = {row["sample"] for report in (singles, gram) for row in report["per_target"] if row["identified"]}
    with_singleton = {row["client"] for row in singles["per_target"]}
    return {
        "protocol": config.protocol, "dataset": config.dataset, "clients": config.clients, "alpha": config.alpha,
        "clients_with_a_singleton": len(with_singleton) / config.clients,
        "singleton_targets": singles["metrics"]["targets"],
        "samples": samples,
        "exact_fraction": len(exact) / samples,
        "identified_fraction": len(identified) / samples,
        "attacks": {name: {"applicable": r["applicable"], "reason": r["reason"], "seconds": r["seconds"],
                           "threshold": r["threshold"],
                           **{k: v for k, v in r["metrics"].items() if k != "by_round"}}
                    for name, r in reports.items()},
        "case_seconds": document["cases"]["honest"]["seconds"],
        "wall_seconds": wall,
        "environment": document["environment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="multiplies the client counts")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--protocols", nargs="+", default=["plaintext", "mask"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warnings.simplefilter("ignore", PlaintextAggregationWarning)
    rows = []
    started = time.perf_counter()
    settings = [("mnist5k", k * args.scale, a) for k in args.clients for a in ALPHAS]
    settings += [("samples-cifar10", k, a) for k in (2, 4) for a in (0.1, 1.0)]
    for protocol in args.protocols:
        for dataset, clients, alpha in settings:
            config = RunConfig(protocol=protocol, dataset=dataset, clients=clients, alpha=alpha, device=args.device)
            rows.append(sweep_row(config))
            row = rows[-1]
            print(f"{protocol:9s} {dataset:15s} K={clients:4d} α={alpha:<6g} singleton clients "
                  f"{row['clients_with_a_singleton']:.2f}  exact {row['exact_fraction']:.3f}  identified "
                  f"{row['identified_fraction']:.3f}  gram@0.95 {row['attacks']['gram']['recovered_fraction']:.3f}  "
                  f"({row['wall_seconds']:.0f} s)", flush=True)
    document = {"schema_version": 1, "benchmark": "attack_sweep", "attacks": ATTACKS, "exact_threshold": EXACT,
                "rows": rows, "total_seconds": time.perf_counter() - started, "environment": rows[-1]["environment"]}
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "attack_sweep.json", document, overwrite=True)
    plot(rows, RESULTS / "attack_sweep.png")


def plot(rows: list[dict], path: Path) -> None:
    mnist = [r for r in rows if r["dataset"] == "mnist5k"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for protocol, style in (("plaintext", "-"), ("mask", ":")):
        for clients in sorted({r["clients"] for r in mnist}):
            points = sorted((r["alpha"], r) for r in mnist if r["protocol"] == protocol and r["clients"] == clients)
            if not points:
                continue
            alphas = [a for a, _ in points]
            label = f"{protocol}, K={clients}"
            axes[0].plot(alphas, [r["exact_fraction"] for _, r in points], style, marker="o", label=label)
            axes[1].plot(alphas, [r["attacks"]["gram"]["recovered_fraction"] for _, r in points], style, marker="o",
                         label=label)
            if protocol == "plaintext":  # ground truth: the same under every protocol
                axes[2].plot(alphas, [r["clients_with_a_singleton"] for _, r in points], style, marker="o",
                             label=f"K={clients}")
    titles = ("training samples recovered exactly (cos ≥ 0.9999)", "gram attack: samples at cos ≥ 0.95",
              "clients holding at least one singleton (ground truth)")
    for axis, title in zip(axes, titles):
        axis.set_xscale("log")
        axis.set_xlabel("Dirichlet α")
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
