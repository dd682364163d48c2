"""How FedAvg's default learning rate per head was chosen: on a validation split of the training data only.

The linear head's rate (16) was chosen by accuracy_table.py; the MLP head (one hidden ReLU layer)
trains differently (its rate multiplies a two-layer update), and at the linear head's rate it ends
at chance. Here each head is trained at every rate of the grid on 80 % of mnist5k's training split
(K = 20, α = 0.1, seed 0, the default rounds) and scored on the other 20 %; the test split is scored
for the chosen rate only, for reference. Writes benchmarks/results/head_selection.json.

    python benchmarks/head_selection.py [--rounds 100] [--heads linear mlp]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from accuracy_table import Features, federation, train

from secure_afl.config import RunConfig
from secure_afl.data.partition import stratified_holdout
from secure_afl.results import environment, write_results

RESULTS = Path(__file__).parent / "results"
RATES = {"linear": (1.0, 4.0, 16.0, 64.0), "mlp": (0.25, 1.0, 4.0, 16.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=RunConfig.rounds)
    parser.add_argument("--heads", nargs="+", default=["mlp"], choices=sorted(RATES))
    args = parser.parse_args()
    features = Features("mnist5k", None)
    fit, val = stratified_holdout(features.train_y, 0.2, seed=1)
    validation = federation(features.train[fit], features.train_y[fit], features.train[val], features.train_y[val],
                            features.classes, 20, 0.1, 0)
    test = federation(features.train[fit], features.train_y[fit], features.test, features.test_y,
                      features.classes, 20, 0.1, 0)
    rows, chosen = [], {}
    for head in args.heads:
        for lr in RATES[head]:
            params = {"rounds": args.rounds, "lr": lr, "head": head}
            start = time.perf_counter()
            _, scored, _ = train("fedavg", validation, params, 0)
            rows.append({"head": head, "lr": lr, "validation": scored["accuracy"],
                         "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
        best = max((r for r in rows if r["head"] == head), key=lambda r: r["validation"])
        _, reference, _ = train("fedavg", test, {"rounds": args.rounds, "lr": best["lr"], "head": head}, 0)
        best["test (recorded, never used to choose)"] = reference["accuracy"]
        chosen[head] = best["lr"]
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "head_selection.json", {
        "schema_version": 1, "benchmark": "head_selection", "dataset": "mnist5k", "clients": 20, "alpha": 0.1,
        "rounds": args.rounds, "chosen_lr": chosen, "rows": rows,
        "environment": environment(torch.device("cpu"), seed=0)}, overwrite=True)
    print(f"chosen on validation: {chosen}")


if __name__ == "__main__":
    main()
