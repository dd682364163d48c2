"""Accuracy of AFL, APFL, DeepAFL, FedAvg and FedProx across label skew α and client count K.

Hyperparameters are chosen on a validation split of the training data (20%, stratified; the
validation split plays the test set's role, including the per-client held-out splits), at the
reference setting α = 0.1, K = 20, seed 0; the test split is used only for the final table:
α ∈ {0.05, 0.1, 0.5, 1.0} × K ∈ {20, 50, 100} × seeds {0, 1, 2} (partition and algorithm seeds),
global accuracy and personalized accuracy (each client's held-out split, the model it uses).
Sums go through the plaintext protocol here: every secure protocol returns the same sums (tested),
and the table is about accuracy. DeepAFL's global model does not depend on the partition (tested),
so it is trained once per seed (federated, at K = 20, α = 0.1) and evaluated on every partition;
AFL and APFL are trained federated for every cell. Also recorded: DeepAFL's per-layer
train / validation / test accuracy and the gradient baselines' accuracy after every round.
Wall-clock comparisons live in time_to_accuracy.py, which runs alone: this grid takes an hour on
two cores and its timings would measure whatever else the machine was doing. Datasets: mnist5k,
and cifar10 / cifar100 whenever ``--data-dir`` holds them (skipped, with the reason, otherwise).
``--scale`` < 1 trims the grid.

    python benchmarks/accuracy_table.py [--data-dir DIR] [--clients 20 50 100] [--seeds 3]
Writes benchmarks/results/accuracy_table.json and accuracy_table.png.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from protocols import PlaintextProtocol
from secure_afl.algorithms.afl import AFLConfig
from secure_afl.algorithms.apfl import APFLConfig
from secure_afl.algorithms.deepafl import DeepAFLConfig, centralized
from secure_afl.algorithms.fedavg import FedAvgConfig
from secure_afl.algorithms.registry import algorithm
from secure_afl.config import RunConfig
from secure_afl.data.datasets import load_dataset
from secure_afl.data.partition import allocate_held_out, partition, stratified_holdout
from secure_afl.device import resolve_device
from secure_afl.errors import SecureAFLError
from secure_afl.results import environment, write_results
from secure_afl.runner import (
    FederatedData, Timer, backbone_features, build_feature_map, build_local_map, evaluate, federate,
)

RESULTS = Path(__file__).parent / "results"
ALPHAS = (0.05, 0.1, 0.5, 1.0)
CLIENTS = (20, 50, 100)
GAMMA = 0.1  # chosen on validation by gamma_selection.py
APFL_GRID = {"beta": (0.1, 0.3, 0.5, 0.7, 1.0), "lam": (0.1, 1.0, 10.0), "activation": ("tanh", "relu")}
# DeepAFL: d_Φ 1024 is the paper's random expansion, 0 starts from the (scaled) features themselves
DEEP_GRID = {"width": (1024, 0), "lam": (10.0, 100.0, 1000.0), "gamma": (10.0, 100.0)}
DEEP_MAX_LAYERS = 15
FEDAVG_LR = (1.0, 4.0, 16.0, 64.0)
FEDPROX_MU = (0.001, 0.01, 0.1)


class Features:
    """Mapped features of one dataset: the primary map and, per activation, APFL's refinement map."""

    def __init__(self, name: str, data_dir: str | None):
        self.dataset = load_dataset(name, data_dir)
        config = RunConfig(dataset=name, data_dir=data_dir)
        raw_train, raw_test, _ = backbone_features(config, self.dataset, resolve_device("cpu"), progress=False)
        self.raw = (torch.from_numpy(raw_train), torch.from_numpy(raw_test))
        feature_map = build_feature_map(config)
        self.train, self.test = (feature_map.apply(r)[0] for r in self.raw)
        self.train_y = self.dataset.labels(self.dataset.train)
        self.test_y = self.dataset.labels(self.dataset.test)
        self.classes = self.dataset.num_classes
        self._refine = {}

    def refinement(self, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
        if activation not in self._refine:
            feature_map = build_local_map(RunConfig(algorithm="apfl", refine_activation=activation))
            self._refine[activation] = tuple(feature_map.apply(r)[0] for r in self.raw)
        return self._refine[activation]


def federation(x, y, x_test, y_test, classes, clients, alpha, seed, refine=None) -> FederatedData:
    parts = partition(y, clients, "dirichlet", alpha=alpha, seed=seed)
    held = allocate_held_out(parts, y, y_test, seed=seed)
    return FederatedData(x, y, x_test, y_test, parts, held, classes, *(refine or (None, None)))


def train(method: str, data: FederatedData, params: dict, seed: int):
    """One federated run; returns (model, metrics, test accuracy after every round of a gradient method)."""
    entry = algorithm(method)
    job = {
        "afl": lambda: AFLConfig(GAMMA),
        "apfl": lambda: APFLConfig(params["lam"], params["beta"], AFLConfig(GAMMA)),
        "deepafl": lambda: deep_config(params, params["layers"], seed),
        "fedavg": lambda: FedAvgConfig(rounds=params["rounds"], lr=params["lr"], head=params.get("head", "linear"),
                                       seed=seed),
        "fedprox": lambda: FedAvgConfig(rounds=params["rounds"], lr=params["lr"], mu=params["mu"], seed=seed),
    }[method]()  # this benchmark's own grids, not the CLI's options
    history = []
    server, clients = entry.build(job, data, len(data.train_y), 1.0)
    observer = None
    if entry.history:
        test_x = data.test_x.numpy()
        observer = lambda spec, srv: history.append(srv.model().accuracy(test_x, data.test_y))  # noqa: E731
    federate(server, clients, PlaintextProtocol(), Timer(), observer)
    personal = None if entry.personalize is None else entry.personalize(job, server, clients)
    model = server.model()
    metrics = evaluate(model, None, data, list(range(len(data.client_indices))), personal)
    return model, metrics, history


def select(features: Features, fit, val, quick: bool) -> dict:
    """Hyperparameters per method, by validation accuracy at α = 0.1, K = 20, seed 0."""
    x, y = features.train[fit], features.train_y[fit]
    xv, yv = features.train[val], features.train_y[val]
    chosen, log = {}, []

    def data_for(refine=None):
        return federation(x, y, xv, yv, features.classes, 20, 0.1, 0, refine)

    best = None
    for activation in APFL_GRID["activation"]:
        r_train, _ = features.refinement(activation)
        data = data_for((r_train[fit], r_train[val]))
        for beta, lam in itertools.product(APFL_GRID["beta"], APFL_GRID["lam"]):
            _, m, _ = train("apfl", data, {"beta": beta, "lam": lam}, 0)
            log.append({"method": "apfl", "activation": activation, "beta": beta, "lam": lam,
                        "validation_personalized": m["personalized_accuracy"]})
            if best is None or m["personalized_accuracy"] > best[0]:
                best = (m["personalized_accuracy"], {"activation": activation, "beta": beta, "lam": lam})
    chosen["apfl"] = best[1]

    best = None
    max_layers = 4 if quick else DEEP_MAX_LAYERS
    for values in itertools.product(*DEEP_GRID.values()):
        params = dict(zip(DEEP_GRID, values))
        # centralized on the fit split: every layer equals the federated one (tested), at a fraction of the time
        model = centralized(x, y, features.classes, deep_config(params, max_layers, 0), 1.0)
        per_layer = {"train": model.layer_accuracy(x.numpy(), y), "validation": model.layer_accuracy(xv.numpy(), yv),
                     "test (recorded, never used to choose)": model.layer_accuracy(features.test.numpy(), features.test_y)}
        layers = int(np.argmax(per_layer["validation"]))
        log.append({"method": "deepafl", **params, "per_layer": per_layer})
        if best is None or per_layer["validation"][layers] > best[0]:
            best = (per_layer["validation"][layers], {**params, "layers": layers})
    chosen["deepafl"] = best[1]

    rounds = 30 if quick else 100
    best = None
    for lr in FEDAVG_LR:
        _, m, _ = train("fedavg", data_for(), {"rounds": rounds, "lr": lr}, 0)
        log.append({"method": "fedavg", "lr": lr, "validation": m["accuracy"]})
        if best is None or m["accuracy"] > best[0]:
            best = (m["accuracy"], {"lr": lr, "rounds": rounds})
    chosen["fedavg"] = best[1]
    best = None
    for mu in FEDPROX_MU:
        _, m, _ = train("fedprox", data_for(), {**chosen["fedavg"], "mu": mu}, 0)
        log.append({"method": "fedprox", "mu": mu, "validation": m["accuracy"]})
        if best is None or m["accuracy"] > best[0]:
            best = (m["accuracy"], {**chosen["fedavg"], "mu": mu})
    chosen["fedprox"] = best[1]
    chosen["afl"] = {"gamma": GAMMA}
    return {"chosen": chosen, "log": log}


def table(features: Features, chosen: dict, seeds: int, alphas, clients_list) -> list[dict]:
    rows = []
    refine = features.refinement(chosen["apfl"]["activation"])
    deep_models = {}
    for seed in range(seeds):
        data = federation(features.train, features.train_y, features.test, features.test_y, features.classes, 20, 0.1, seed)
        deep_models[seed], _, _ = train("deepafl", data, chosen["deepafl"], seed)
    for alpha, k, seed in itertools.product(alphas, clients_list, range(seeds)):
        try:
            data = federation(features.train, features.train_y, features.test, features.test_y, features.classes, k,
                              alpha, seed, refine)
        except SecureAFLError as exc:  # a partition this skewed cannot give every client a sample
            rows.append({"alpha": alpha, "clients": k, "seed": seed, "skipped": str(exc)})
            continue
        for method in ("afl", "apfl", "deepafl", "fedavg", "fedprox"):
            if method == "deepafl":
                metrics, history = evaluate(deep_models[seed], None, data, list(range(k))), []
            else:
                _, metrics, history = train(method, data, chosen[method], seed)
            row = {"alpha": alpha, "clients": k, "seed": seed, "method": method, "accuracy": metrics["accuracy"],
                   "personalized_accuracy": metrics["personalized_accuracy"]}
            if history:
                row["accuracy_per_round"] = history
            rows.append(row)
            print(f"alpha={alpha:<5} K={k:<4} seed={seed} {method:8s} acc {row['accuracy']:.4f} "
                  f"personalized {row['personalized_accuracy']:.4f}")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    cells = {}
    for r in rows:
        if "method" in r:
            cells.setdefault((r["method"], r["alpha"], r["clients"]), []).append(r)
    out = []
    for (method, alpha, k), group in sorted(cells.items()):
        acc = [g["accuracy"] for g in group]
        per = [g["personalized_accuracy"] for g in group]
        out.append({"method": method, "alpha": alpha, "clients": k, "seeds": len(group),
                    "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.pstdev(acc),
                    "personalized_mean": statistics.mean(per), "personalized_std": statistics.pstdev(per)})
    return out


def deep_config(params: dict, layers: int, seed: int) -> DeepAFLConfig:
    return DeepAFLConfig(width=params["width"], layers=layers, lam=params["lam"], gamma=params["gamma"], seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist5k", "cifar10", "cifar100"],
                        help="CIFAR runs when --data-dir holds it and is recorded as skipped otherwise")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS), help="client counts K of the table")
    parser.add_argument("--scale", type=float, default=1.0, help="< 1: fewer cells and rounds, for a quick look")
    args = parser.parse_args()
    quick = args.scale < 1
    alphas, clients_list = (ALPHAS, tuple(args.clients)) if not quick else ((0.1, 1.0), (20,))
    document = {"schema_version": 1, "benchmark": "accuracy_table", "datasets": {},
                "environment": environment(torch.device("cpu"), seed=0)}
    for name in args.dataset:
        try:
            features = Features(name, args.data_dir)
        except SecureAFLError as exc:
            document["datasets"][name] = {"skipped": str(exc)}
            print(f"{name}: skipped ({exc})")
            continue
        fit, val = stratified_holdout(features.train_y, 0.2, seed=1)
        start = time.perf_counter()
        selection = select(features, fit, val, quick)
        print(f"{name}: chosen on validation {selection['chosen']} ({time.perf_counter() - start:.0f}s)")
        rows = table(features, selection["chosen"], args.seeds if not quick else 1, alphas, clients_list)
        document["datasets"][name] = {
            "selection": selection, "rows": rows, "summary": summarise(rows),
        }
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "accuracy_table.json", document, overwrite=True)
    plot(document, RESULTS / "accuracy_table.png")


def plot(document: dict, path: Path) -> None:
    sets = [(n, d) for n, d in document["datasets"].items() if "summary" in d]
    if not sets:
        return
    fig, axes = plt.subplots(len(sets), 2, figsize=(12, 4 * len(sets)), squeeze=False)
    for row, (name, data) in enumerate(sets):
        for col, key in enumerate(("accuracy_mean", "personalized_mean")):
            ax = axes[row][col]
            for method in ("afl", "apfl", "deepafl", "fedavg", "fedprox"):
                sel = [s for s in data["summary"] if s["method"] == method and s["clients"] == 20]
                ax.plot([s["alpha"] for s in sel], [s[key] for s in sel], marker="o", label=method)
            ax.set(xscale="log", xlabel="Dirichlet α (K = 20)", ylabel=key.replace("_mean", ""), title=f"{name}: {key}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
