"""How the default resolution and γ were chosen: on a validation split of the training data only.

For each input resolution and γ, ridge is fit on 80% of the training split and scored on the
other 20%; the test split is scored only for the (resolution, γ) that validation picks, and for
reference. Writes benchmarks/results/gamma_selection.json.

    python benchmarks/gamma_selection.py [--dataset mnist5k]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from secure_afl.algorithms.afl import AFLConfig, ridge_solve
from secure_afl.algorithms.base import LinearModel
from secure_afl.config import RunConfig
from secure_afl.data.datasets import load_dataset
from secure_afl.data.partition import stratified_holdout
from secure_afl.device import resolve_device
from secure_afl.results import environment, write_results
from secure_afl.runner import backbone_features, build_feature_map
from secure_afl.statistics import compute_statistics

RESULTS = Path(__file__).parent / "results"
GAMMAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 96])
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    device = resolve_device("auto")
    train_y, test_y = dataset.labels(dataset.train), dataset.labels(dataset.test)
    fit, val = stratified_holdout(train_y, 0.2, seed=1)
    rows = []
    for resolution in args.resolutions:
        config = RunConfig(dataset=args.dataset, resolution=resolution)
        train_raw, test_raw, _ = backbone_features(config, dataset, device, progress=False)
        feature_map = build_feature_map(config)
        train_x = feature_map.apply(torch.from_numpy(train_raw))[0].double().numpy()
        test_x = feature_map.apply(torch.from_numpy(test_raw))[0].double().numpy()
        stats = compute_statistics(train_x[fit], train_y[fit], dataset.num_classes)
        full = compute_statistics(train_x, train_y, dataset.num_classes)
        for gamma in GAMMAS:
            validation = LinearModel(ridge_solve(stats, AFLConfig(gamma))).accuracy(train_x[val], train_y[val])
            test = LinearModel(ridge_solve(full, AFLConfig(gamma))).accuracy(test_x, test_y)
            rows.append({"resolution": resolution, "gamma": gamma, "validation_accuracy": validation,
                         "test_accuracy": test})
            print(f"{resolution:4d}px gamma={gamma:<7g} validation {validation:.4f}  test {test:.4f}")
    best = max(rows, key=lambda r: r["validation_accuracy"])
    print(f"validation picks {best['resolution']}px, gamma={best['gamma']}: test {best['test_accuracy']:.4f}")
    RESULTS.mkdir(exist_ok=True)
    write_results(
        RESULTS / "gamma_selection.json",
        {"schema_version": 1, "benchmark": "gamma_selection", "dataset": args.dataset, "rows": rows,
         "selected": best, "environment": environment(device, 1)},
        overwrite=True,
    )


if __name__ == "__main__":
    main()
