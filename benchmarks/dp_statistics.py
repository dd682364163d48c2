"""Accuracy and attack success of AFL under DP on the statistics, across ε (issue 14 §1).

On mnist5k (K = 20, Dirichlet α = 0.1, the default job) for ε ∈ {0.5, 1, 2, 4, 8, 16, ∞} at δ = 1e-5:
the global accuracy of both placements (local under plaintext, distributed under masking, whose
t = ⌊2P/3⌋ + 1 = 14 sets each share to σ/√14) with both solves of the noisy Gram (eig-clip, adassp);
the singleton, class-means and gram attacks on the noisy statistics of the local placement (plaintext:
the server reads every client's noisy vector); and the selection of eig-clip's floor on a validation
split of the training set (the accuracy of the pooled noisy solve for each floor factor, mean of
``--draws`` noise draws; the test set is never used to choose it). ε = ∞ is the same job without DP.
Writes benchmarks/results/dp_statistics.json and .png.

    python benchmarks/dp_statistics.py [--epsilons 0.5 1 2 4 8 16 inf] [--draws 3]
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
import numpy as np

from attacks.suite import attack_run
from secure_afl.config import RunConfig
from secure_afl.privacy import EIG_FLOOR, SOLVES, StatisticsPrivacy, spectral_solve
from secure_afl.results import write_results
from secure_afl.runner import PlaintextAggregationWarning, Timer, load_features, plan_run, run
from secure_afl.statistics import compute_statistics

RESULTS = Path(__file__).parent / "results"
ATTACKS = ["singleton", "class-means", "gram"]
PROTOCOL = {"local": "plaintext", "distributed": "mask"}
FLOORS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
VALIDATION = 0.2  # fraction of the training set held out to choose the floor


def dp_options(epsilon: float, placement: str, solve: str) -> dict:
    if math.isinf(epsilon):
        return {}
    return {"dp_epsilon": epsilon, "dp_placement": placement, "dp_solve": solve}


def accuracy_row(epsilon: float, placement: str, solve: str) -> dict:
    config = RunConfig(protocol=PROTOCOL[placement], **dp_options(epsilon, placement, solve))
    results = run(config)
    metrics = results["metrics"]
    return {"epsilon": epsilon, "placement": placement, "protocol": config.protocol, "solve": solve,
            "accuracy": metrics["accuracy"], "centralized_accuracy": metrics["centralized_accuracy"],
            "max_rel_diff_to_centralized": metrics["max_rel_diff_to_centralized"],
            "personalized_accuracy": metrics["personalized_accuracy"], "dp": metrics.get("dp"),
            "seconds": results["timings_s"]["total"], "environment": results["environment"]}


def attack_row(epsilon: float) -> dict:
    config = RunConfig(protocol="plaintext", **dp_options(epsilon, "local", "eig-clip"))
    started = time.perf_counter()
    document, _ = attack_run(ATTACKS, config)
    return {"epsilon": epsilon, "placement": "local", "protocol": "plaintext",
            "attacks": {name: {"applicable": r["applicable"], "threshold": r["threshold"],
                               "threat_model": r.get("threat_model"),
                               **{k: v for k, v in r["metrics"].items() if k not in ("by_round", "by_client_size")}}
                        for name, r in document["attacks"].items()},
            "seconds": time.perf_counter() - started}


def floor_selection(epsilons: list[float], draws: int) -> list[dict]:
    """Validation accuracy of eig-clip's floor factors (and AdaSSP's ridge) on the pooled noisy statistics
    of 80 % of the training set: the noise of the sum is drawn directly with the run's σ_sum."""
    plan = plan_run(RunConfig(protocol="plaintext"))
    data = load_features(plan, Timer()).data
    x, y = data.train_x.double().cpu().numpy(), data.train_y
    order = np.random.default_rng(0).permutation(len(y))  # a public split; only the noise below must be secret
    held, kept = order[: int(VALIDATION * len(y))], order[int(VALIDATION * len(y)):]
    stats = compute_statistics(x[kept], y[kept], data.num_classes)
    dim, rows = stats.dim, []
    for epsilon in epsilons:
        for placement in ("local", "distributed"):
            config = RunConfig(protocol=PROTOCOL[placement], dp_epsilon=epsilon, dp_placement=placement)
            t = config.protocol_options()["min_clients"] if placement == "distributed" else 1
            privacy = StatisticsPrivacy(epsilon, config.dp_delta, config.max_norm, placement, t, config.clients)
            scores = {f"eig-clip {f:g}": [] for f in FLOORS} | {"adassp": []}
            for _ in range(draws):
                triangle = np.triu(np.random.default_rng().normal(0.0, privacy.sum_sigma, (dim, dim)))
                gram = stats.gram + triangle + np.triu(triangle, 1).T
                cross = stats.cross + np.random.default_rng().normal(0.0, privacy.sum_sigma, stats.cross.shape)
                spectrum = np.linalg.eigh(gram)
                for name in scores:
                    solve, _, floor = name.partition(" ")
                    weights = spectral_solve(*spectrum, cross, config.gamma, privacy.sum_sigma, solve,
                                             float(floor) if floor else 0.0)
                    scores[name].append(float(np.mean(np.argmax(x[held] @ weights, axis=1) == y[held])))
            rows.append({"epsilon": epsilon, "placement": placement, "sum_sigma": privacy.sum_sigma,
                         "validation_accuracy": {name: float(np.mean(v)) for name, v in scores.items()}})
            print(f"floor ε={epsilon:<4g} {placement:11s} " +
                  " ".join(f"{k}: {v:.3f}" for k, v in rows[-1]["validation_accuracy"].items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16, math.inf])
    parser.add_argument("--draws", type=int, default=4, help="noise draws per setting of the floor selection")
    args = parser.parse_args()
    warnings.simplefilter("ignore", PlaintextAggregationWarning)
    started = time.perf_counter()
    finite = [e for e in args.epsilons if math.isfinite(e)]
    selection = floor_selection(finite, args.draws)
    accuracy = []
    for epsilon in args.epsilons:
        for placement in PROTOCOL:
            for solve in SOLVES if math.isfinite(epsilon) else SOLVES[:1]:
                accuracy.append(accuracy_row(epsilon, placement, solve))
                row = accuracy[-1]
                print(f"accuracy ε={epsilon:<4g} {placement:11s} {solve:8s} {row['accuracy']:.4f} "
                      f"(centralized {row['centralized_accuracy']:.4f}, {row['seconds']:.0f} s)", flush=True)
    attacks = []
    for epsilon in args.epsilons:
        attacks.append(attack_row(epsilon))
        print(f"attacks  ε={epsilon:<4g} " + " ".join(f"{name} {r['recovered_fraction']:.3f}"
                                                     for name, r in attacks[-1]["attacks"].items()), flush=True)
    document = {"schema_version": 1, "benchmark": "dp_statistics", "dataset": "mnist5k", "clients": RunConfig.clients,
                "alpha": RunConfig.alpha, "delta": RunConfig.dp_delta, "eig_clip_floor": EIG_FLOOR,
                "floor_selection": selection, "floor_mean_validation_accuracy": _mean_scores(selection),
                "accuracy": accuracy, "attacks": attacks, "total_seconds": time.perf_counter() - started,
                "environment": accuracy[-1]["environment"]}
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "dp_statistics.json", _finite(document), overwrite=True)
    plot(accuracy, attacks, RESULTS / "dp_statistics.png")


def _mean_scores(selection: list[dict]) -> dict:
    """Each solve's validation accuracy averaged over every ε and placement: the floor is chosen on this."""
    names = selection[0]["validation_accuracy"] if selection else {}
    return {name: float(np.mean([row["validation_accuracy"][name] for row in selection])) for name in names}


def _finite(value):
    """JSON has no ∞: ε = ∞ (no DP) is written as null."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def plot(accuracy: list[dict], attacks: list[dict], path: Path) -> None:
    finite = sorted({r["epsilon"] for r in accuracy if math.isfinite(r["epsilon"])})
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for placement, colour in (("local", "tab:blue"), ("distributed", "tab:orange")):
        for solve, style in zip(SOLVES, ("-", "--")):
            points = sorted((r["epsilon"], r["accuracy"]) for r in accuracy
                            if r["placement"] == placement and r["solve"] == solve and math.isfinite(r["epsilon"]))
            axes[0].plot(*zip(*points), style, color=colour, marker="o", label=f"{placement}, {solve}")
    no_dp = [r for r in accuracy if math.isinf(r["epsilon"])]
    if no_dp:
        axes[0].axhline(no_dp[0]["accuracy"], color="grey", linestyle=":", label="no DP (ε = ∞)")
    axes[0].set_title("AFL global test accuracy, mnist5k K=20 α=0.1, δ=1e-5", fontsize=10)
    axes[0].set_ylabel("accuracy")
    for name, marker in zip(ATTACKS, ("o", "s", "^")):
        points = [(r["epsilon"] if math.isfinite(r["epsilon"]) else 2 * max(finite),
                   r["attacks"][name]["recovered_fraction"]) for r in attacks]
        axes[1].plot(*zip(*sorted(points)), marker=marker, label=name)
    axes[1].set_title("attacks on the local placement's noisy statistics (plaintext)\n"
                      "recovered fraction; rightmost point: no DP", fontsize=10)
    axes[1].set_ylim(-0.02, 1.02)
    for axis in axes:
        axis.set_xscale("log", base=2)
        axis.set_xlabel("ε")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
