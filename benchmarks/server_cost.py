"""Server cost of AFL: aggregating K clients' packed statistics and solving once, versus d.

Target on the 2-core development machine: ≤ 3 s for K = 100 clients at d = 1280 (aggregation
plus solve). Client vectors are valid statistics of random features; to keep memory bounded at
d = 4096 (67 MB per vector) the K clients cycle through a few distinct vectors, which changes
nothing the server does. Writes benchmarks/results/server_cost.json and .png.

    python benchmarks/server_cost.py [--clients 100] [--scale 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from protocols import PlaintextProtocol
from secure_afl.algorithms.afl import AFLConfig, AFLServer, statistics_bound
from secure_afl.results import environment, write_results
from secure_afl.statistics import StatisticsLayout, compute_statistics

RESULTS = Path(__file__).parent / "results"
CLASSES = 10
ROWS_PER_CLIENT = 40
DISTINCT = 4


def client_vectors(dim: int, clients: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    layout = StatisticsLayout(dim, CLASSES)
    distinct = []
    for _ in range(DISTINCT):
        x = rng.standard_normal((ROWS_PER_CLIENT, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        distinct.append(layout.pack(compute_statistics(x, rng.integers(CLASSES, size=ROWS_PER_CLIENT), CLASSES)))
    return {k: distinct[k % DISTINCT] for k in range(clients)}


def measure(dim: int, clients: int, repeats: int) -> dict:
    vectors = client_vectors(dim, clients, seed=dim)
    aggregation, solve = [], []
    for _ in range(repeats):
        server = AFLServer(dim, CLASSES, AFLConfig(gamma=0.1), statistics_bound(ROWS_PER_CLIENT, 1.0))
        spec = server.next_round()
        start = time.perf_counter()
        result = PlaintextProtocol().aggregate(spec.name, vectors, spec.bound)
        middle = time.perf_counter()
        server.receive(spec, result.total)
        end = time.perf_counter()
        aggregation.append(middle - start)
        solve.append(end - middle)
    row = {
        "dim": dim,
        "clients": clients,
        "vector_length": int(next(iter(vectors.values())).shape[0]),
        "aggregation_s": statistics.median(aggregation),
        "solve_s": statistics.median(solve),
    }
    row["total_s"] = row["aggregation_s"] + row["solve_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--scale", type=int, default=1, help="multiplies the client count")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clients = args.clients * args.scale
    rows = []
    for dim in (512, 1280, 2048, 4096):
        rows.append(measure(dim, clients, args.repeats))
        r = rows[-1]
        print(f"d={dim:5d} K={clients}: aggregation {r['aggregation_s']:.3f}s  solve {r['solve_s']:.3f}s  "
              f"total {r['total_s']:.3f}s")
    document = {
        "schema_version": 1,
        "benchmark": "server_cost",
        "target": "total_s <= 3 at d = 1280, K = 100 on the 2-core development machine",
        "rows": rows,
        "environment": environment(torch.device("cpu"), seed=0),
    }
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "server_cost.json", document, overwrite=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    dims = [r["dim"] for r in rows]
    for key in ("aggregation_s", "solve_s", "total_s"):
        ax.loglog(dims, [r[key] for r in rows], marker="o", label=key.removesuffix("_s"))
    ax.axhline(3.0, color="grey", linestyle=":", label="3 s target (d=1280)")
    ax.set(xlabel="feature dimension d", ylabel="seconds", title=f"AFL server cost, K={clients} clients")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "server_cost.png", dpi=120)


if __name__ == "__main__":
    main()
