"""Membership inference on AFL's released statistics and model, per test, under plaintext and masking.

On mnist5k (α = 0.1, seed 0) for K = 20 and 100 clients: every membership test's AUC, TPR at 1 % FPR
and 95 % ε lower bound, at the per-client level (readable statistics: plaintext only) and on the
union of the clients (the aggregate every protocol releases, and the model solved from it). Members
are training rows, non-members held-out rows of the same classes (attacks/membership/evaluation.py).
Writes benchmarks/results/membership.json and .png.

    python benchmarks/membership.py [--clients 20 100] [--protocols plaintext mask]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from attacks.membership.attack import TESTS
from attacks.membership.evaluation import LEVELS
from attacks.suite import attack_run
from secure_afl.config import RunConfig
from secure_afl.results import write_results
from secure_afl.runner import PlaintextAggregationWarning

RESULTS = Path(__file__).parent / "results"
FIGURES = ("auc", "tpr_at_1pct_fpr", "epsilon_lower_bound_95")


def row(config: RunConfig) -> dict:
    start = time.perf_counter()
    document, _ = attack_run(["membership"], config)
    tests = {test: {level: ({k: figures[k] for k in (*FIGURES, "members", "non_members")} if "auc" in figures
                            else None) for level, figures in levels.items()}
             for test, levels in document["tests"].items()}
    return {"protocol": config.protocol, "dataset": config.dataset, "clients": config.clients, "alpha": config.alpha,
            "seed": config.seed, "metrics": {k: v for k, v in document["metrics"].items() if k != "baseline"},
            "tests": tests, "skipped": document["skipped"], "attack_seconds": document["seconds"],
            "wall_seconds": time.perf_counter() - start, "environment": document["environment"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--protocols", nargs="+", default=["plaintext", "mask"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warnings.simplefilter("ignore", PlaintextAggregationWarning)
    rows = []
    started = time.perf_counter()
    for protocol in args.protocols:
        for clients in args.clients:
            rows.append(row(RunConfig(protocol=protocol, clients=clients, device=args.device)))
            figures = "  ".join(f"{test}@{level} {f['auc']:.3f}" for test, levels in rows[-1]["tests"].items()
                                for level, f in levels.items() if f)
            print(f"{protocol:9s} K={clients:4d}  {figures}  ({rows[-1]['wall_seconds']:.0f} s)", flush=True)
    document = {"schema_version": 1, "benchmark": "membership", "baseline": {"auc": 0.5, "tpr_at_1pct_fpr": 0.01},
                "rows": rows, "total_seconds": time.perf_counter() - started, "environment": rows[-1]["environment"]}
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "membership.json", document, overwrite=True)
    plot(rows, RESULTS / "membership.png")


def plot(rows: list[dict], path: Path) -> None:
    """AUC and TPR at 1 % FPR of every test, one bar per (protocol, K, level) that answered it."""
    bars = [(r, level) for r in rows for level in LEVELS if any(r["tests"][t][level] for t in TESTS)]
    figure, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    width = 0.8 / max(len(bars), 1)
    for axis, figure_name, chance in zip(axes, ("auc", "tpr_at_1pct_fpr"), (0.5, 0.01)):
        for i, (r, level) in enumerate(bars):
            values = [r["tests"][t][level][figure_name] if r["tests"][t][level] else np.nan for t in TESTS]
            axis.bar(np.arange(len(TESTS)) + i * width, values, width,
                     label=f"{r['protocol']}, K={r['clients']}, {level}")
        axis.axhline(chance, color="grey", linestyle=":", label="random guess")
        axis.set_xticks(np.arange(len(TESTS)) + 0.4 - width / 2, TESTS)
        axis.set_ylim(0, 1.02)
        axis.set_title({"auc": "AUC", "tpr_at_1pct_fpr": "TPR at 1 % FPR"}[figure_name], fontsize=10)
        axis.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    figure.suptitle("membership inference on mnist5k, α = 0.1 (members: training rows; non-members: held-out rows)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
