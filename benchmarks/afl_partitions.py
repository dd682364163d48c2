"""AFL against centralized ridge across label skew and client counts on mnist5k, with timings.

AFL's claim is that its global model does not depend on how the data are split: the same
accuracy (and the same weights, to float64 round-off) for every Dirichlet α and client count.
Writes benchmarks/results/afl_partitions.json and .png.

    python benchmarks/afl_partitions.py [--scale 2] [--dataset mnist5k]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from secure_afl.config import RunConfig
from secure_afl.results import write_results
from secure_afl.runner import PlaintextAggregationWarning, run

RESULTS = Path(__file__).parent / "results"
ALPHAS = (0.01, 0.1, 0.5, 1.0, math.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--scale", type=int, default=1, help="multiplies the client counts (10, 50, 100)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warnings.simplefilter("ignore", PlaintextAggregationWarning)  # plaintext is the point of comparison here

    rows = []
    for clients in (10 * args.scale, 50 * args.scale, 100 * args.scale):
        for alpha in ALPHAS:
            config = RunConfig(
                dataset=args.dataset, clients=clients, device=args.device,
                **(dict(partition="iid") if math.isinf(alpha) else dict(partition="dirichlet", alpha=alpha)),
            )
            start = time.perf_counter()
            result = run(config)
            wall = time.perf_counter() - start
            metrics = result["metrics"]
            rows.append({
                "clients": clients,
                "alpha": "inf" if math.isinf(alpha) else alpha,
                "accuracy": metrics["accuracy"],
                "centralized_accuracy": metrics["centralized_accuracy"],
                "max_rel_diff_to_centralized": metrics["max_rel_diff_to_centralized"],
                "personalized_accuracy": metrics["personalized_accuracy"],
                "timings_s": result["timings_s"],
                "wall_s": wall,
                "upload_per_client_bytes": result["bytes"]["per_client_upload_max"],
            })
            print(f"K={clients:4d} alpha={rows[-1]['alpha']!s:>5}  acc={metrics['accuracy']:.4f}  "
                  f"central={metrics['centralized_accuracy']:.4f}  rel_diff={metrics['max_rel_diff_to_centralized']:.1e}  "
                  f"federated part={sum(result['timings_s'][k] for k in ('local', 'aggregation', 'solve')):.2f}s")
    document = {
        "schema_version": 1,
        "benchmark": "afl_partitions",
        "dataset": args.dataset,
        "config": {k: v for k, v in vars(RunConfig(dataset=args.dataset)).items() if k not in ("clients", "alpha")},
        "rows": rows,
        "environment": result["environment"],
    }
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "afl_partitions.json", document, overwrite=True)
    plot(rows, RESULTS / "afl_partitions.png")


def plot(rows: list[dict], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [str(a) if not (isinstance(a, float) and math.isinf(a)) else "inf (iid)" for a in ALPHAS]
    for clients in sorted({r["clients"] for r in rows}):
        mine = [r for r in rows if r["clients"] == clients]
        left.plot(labels, [r["accuracy"] for r in mine], marker="o", label=f"AFL, K={clients}")
        right.semilogy(labels, [max(r["max_rel_diff_to_centralized"], 1e-17) for r in mine], marker="o", label=f"K={clients}")
    left.plot(labels, [rows[0]["centralized_accuracy"]] * len(labels), "k--", label="centralized ridge")
    left.set(xlabel="Dirichlet alpha", ylabel="global test accuracy", title="AFL accuracy vs label skew")
    right.set(xlabel="Dirichlet alpha", ylabel="max |W - W_central| / max |W_central|", title="distance to centralized")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
