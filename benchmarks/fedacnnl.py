"""FedACnnL / pFedACnnL against AFL, APFL and FedAvg training a CNN end to end -> benchmarks/results/fedacnnl.json
and .png.

This toolkit's closed-form reading of "Analytic Personalized Federated Meta-Learning" (papers/001_*.txt), measured
against the paper's two claims: FedACnnL needs 83-99 % less training time than gradient FL, and personalization
adds 4-8 points. Per data set and seed:

- pfedacnnl (proximal; plus re-weighted on the first seed): its global model IS FedACnnL's (the same L + 1
  rounds), so one run gives FedACnnL's accuracy, its per-client accuracy with the global model, pFedACnnL's
  personalized accuracy, the wall time of every round (per layer) and the bytes of every round.
- afl and apfl on the frozen pretrained backbone (efficientnet_lite0 features, cached).
- fedavg-cnn on the SAME network as FedACnnL (``--cnn acnn``: FedACnnL's convolutions, leaky ReLU, mean pooling and
  head, built from the same --acnn-* options, trained end to end by SGD; its learning rate the best of ``--acnn-lrs``
  after ``--sweep-rounds`` rounds on the first mnist5k seed, every value tried recorded), and fedavg-cnn on the
  ConvNet of algorithms/convnet.py: each its accuracy after every round with the training time so far; reported at
  FedACnnL's training time (same wall time) and at the end, with the time it needs to reach FedACnnL's accuracy (if
  it does within its rounds) and FedACnnL's time as a fraction of that (the paper's "83-99 % less training time").

Every method runs under plaintext aggregation (the same for all; masking adds the same per-round cost to each,
measured in benchmarks/masking_cost.py) without the centralized reference. Times are wall seconds on a shared
2-core CPU (load recorded beside them).

    python benchmarks/fedacnnl.py [--scale 1] [--fedavg-rounds 6] [--datasets mnist5k samples-cifar10] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from protocols.errors import InvalidContributionError
from secure_afl.config import RunConfig
from secure_afl.results import environment, write_results
from secure_afl.runner import run, training_seconds

RESULTS = Path(__file__).parent / "results"
JOBS = (("samples-cifar10", 4, (0,)), ("mnist5k", 20, (0, 1, 2)))  # (data set, clients K, seeds)
FEDAVG_ROUNDS = 6  # fedavg-cnn rounds at --scale 1 (each a local epoch on every client)
ACNN_LRS = (0.01, 0.05, 0.2)  # learning rates tried for fedavg-cnn --cnn acnn
SWEEP_ROUNDS = 3  # rounds each tried rate trains for
SWEEP_JOB = ("mnist5k", 20, 0)  # the one (data set, K, seed) the rates are tried on


def common_options(dataset: str, clients: int, seed: int) -> dict:
    return dict(dataset=dataset, clients=clients, alpha=0.1, seed=seed, protocol="plaintext",
                centralized_reference=False)


def fedavg_history(common: dict, rounds: int, **options) -> list[dict]:
    return run(RunConfig(algorithm="fedavg-cnn", rounds=rounds, **common, **options))["metrics"]["history"]


def against_fedacnnl(history: list[dict], accuracy: float, seconds: float) -> dict:
    """A fedavg-cnn history at FedACnnL's training time, at its end, and when (if) it reaches FedACnnL's accuracy."""
    within = [h for h in history if h["train_seconds"] <= seconds]
    reached = [h for h in history if h["accuracy"] >= accuracy]
    return {
        "history": history,
        "accuracy_at_fedacnnl_time": within[-1]["accuracy"] if within else None,
        "final_accuracy": history[-1]["accuracy"], "final_train_seconds": history[-1]["train_seconds"],
        "seconds_to_fedacnnl_accuracy": reached[0]["train_seconds"] if reached else None,
    }


def sweep(lrs: list[float], rounds: int) -> dict:
    """fedavg-cnn --cnn acnn for ``rounds`` rounds at every rate on SWEEP_JOB; the best final accuracy is kept. A rate
    whose parameters diverge (a client's update holds NaN, which the protocol refuses) is recorded as diverged."""
    dataset, clients, seed = SWEEP_JOB
    tried = {}
    for lr in lrs:
        try:
            tried[str(lr)] = fedavg_history(common_options(dataset, clients, seed), rounds, cnn="acnn", lr=lr)
        except InvalidContributionError as error:
            tried[str(lr)] = f"diverged: {error}"
    final = {lr: history[-1]["accuracy"] for lr, history in tried.items() if not isinstance(history, str)}
    return {"job": {"dataset": dataset, "clients": clients, "seed": seed}, "rounds": rounds, "tried": tried,
            "final_accuracy": final, "chosen_lr": float(max(final, key=final.get))}


def measure(dataset: str, clients: int, seed: int, reweighted: bool, rounds: int, acnn_lr: float) -> dict:
    common = common_options(dataset, clients, seed)
    personal = run(RunConfig(algorithm="pfedacnnl", **common))
    metrics = personal["metrics"]
    acnn_seconds = training_seconds(personal["timings_s"])
    row = {
        "dataset": dataset, "clients": clients, "seed": seed,
        "fedacnnl": {"accuracy": metrics["accuracy"], "per_client_accuracy": metrics["global_model_personalized_accuracy"],
                     "train_seconds": acnn_seconds, "round_seconds": metrics["acnn"]["round_seconds"],
                     "rounds": metrics["acnn"]["rounds"],
                     "upload_bytes_per_client": [r["upload_per_client_max"] for r in personal["bytes"]["per_round"]],
                     "download_bytes_per_client": [r["download_per_client_max"] for r in personal["bytes"]["per_round"]]},
        "pfedacnnl_proximal": {"personalized_accuracy": metrics["personalized_accuracy"],
                               "choices": metrics["acnn"]["choices"],
                               "personalization_seconds": personal["timings_s"].get("personalization", 0.0)},
    }
    if reweighted:
        other = run(RunConfig(algorithm="pfedacnnl", pfed_objective="reweighted", **common))["metrics"]
        row["pfedacnnl_reweighted"] = {"personalized_accuracy": other["personalized_accuracy"],
                                       "choices": other["acnn"]["choices"]}
    for name in ("afl", "apfl"):
        result = run(RunConfig(algorithm=name, **common))
        row[name] = {"accuracy": result["metrics"]["accuracy"],
                     "personalized_accuracy": result["metrics"]["personalized_accuracy"],
                     "train_seconds": training_seconds(result["timings_s"])}
    accuracy = row["fedacnnl"]["accuracy"]
    row["fedavg_cnn"] = against_fedacnnl(fedavg_history(common, rounds), accuracy, acnn_seconds)
    row["fedavg_acnn"] = {"lr": acnn_lr, **against_fedacnnl(fedavg_history(common, rounds, cnn="acnn", lr=acnn_lr),
                                                            accuracy, acnn_seconds)}
    return row


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def fedavg_summary(mine: list[dict], key: str, acnn_time: float) -> dict:
    """Means over seeds of one fedavg-cnn model's comparison; the time saving only when every seed reached
    FedACnnL's accuracy (a mean over the seeds that did would flatter the gradient baseline's speed)."""
    reached = [r[key]["seconds_to_fedacnnl_accuracy"] for r in mine]
    to_reach = mean(reached) if None not in reached else None
    return {
        f"{key}_accuracy_at_fedacnnl_time": mean([r[key]["accuracy_at_fedacnnl_time"] for r in mine]),
        f"{key}_final_accuracy": mean([r[key]["final_accuracy"] for r in mine]),
        f"{key}_train_seconds": mean([r[key]["final_train_seconds"] for r in mine]),
        f"{key}_seeds_reaching_fedacnnl_accuracy": sum(s is not None for s in reached),
        f"{key}_seconds_to_fedacnnl_accuracy": to_reach,
        f"fedacnnl_time_fraction_of_{key}_to_same_accuracy_per_seed": [
            None if r[key]["seconds_to_fedacnnl_accuracy"] is None
            else r["fedacnnl"]["train_seconds"] / r[key]["seconds_to_fedacnnl_accuracy"] for r in mine],
        f"fedacnnl_time_fraction_of_{key}_to_same_accuracy": None if to_reach is None else acnn_time / to_reach,
        f"fedacnnl_time_saving_vs_{key}_to_same_accuracy": None if to_reach is None else 1 - acnn_time / to_reach,
    }


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        acnn_time = mean([r["fedacnnl"]["train_seconds"] for r in mine])
        summary[dataset] = {
            "seeds": [r["seed"] for r in mine],
            "fedacnnl_accuracy": mean([r["fedacnnl"]["accuracy"] for r in mine]),
            "fedacnnl_per_client_accuracy": mean([r["fedacnnl"]["per_client_accuracy"] for r in mine]),
            "pfedacnnl_proximal_personalized_accuracy": mean([r["pfedacnnl_proximal"]["personalized_accuracy"]
                                                              for r in mine]),
            "pfedacnnl_reweighted_personalized_accuracy": mean([r.get("pfedacnnl_reweighted", {}).get(
                "personalized_accuracy") for r in mine]),
            "afl_accuracy": mean([r["afl"]["accuracy"] for r in mine]),
            "apfl_personalized_accuracy": mean([r["apfl"]["personalized_accuracy"] for r in mine]),
            "fedacnnl_train_seconds": acnn_time,
            **fedavg_summary(mine, "fedavg_acnn", acnn_time),
            **fedavg_summary(mine, "fedavg_cnn", acnn_time),
            "round_seconds": [mean(col) for col in zip(*[r["fedacnnl"]["round_seconds"] for r in mine])],
            "rounds": mine[0]["fedacnnl"]["rounds"],
            "upload_bytes_per_client_per_round": mine[0]["fedacnnl"]["upload_bytes_per_client"],
        }
    return summary


def plot(document: dict, path: Path) -> None:
    summary = document["summary"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    names = ("fedacnnl_accuracy", "afl_accuracy", "fedavg_acnn_accuracy_at_fedacnnl_time", "fedavg_acnn_final_accuracy",
             "fedavg_cnn_accuracy_at_fedacnnl_time", "fedavg_cnn_final_accuracy")
    personal = ("fedacnnl_per_client_accuracy", "pfedacnnl_proximal_personalized_accuracy",
                "pfedacnnl_reweighted_personalized_accuracy", "apfl_personalized_accuracy")
    for ax, keys, title in ((axes[0], names, "global accuracy"), (axes[1], personal, "per-client accuracy")):
        width = 0.8 / len(summary)
        for i, (dataset, s) in enumerate(summary.items()):
            ax.bar([j + i * width for j in range(len(keys))], [s[k] or 0.0 for k in keys], width, label=dataset)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))],
                      [k.replace("_accuracy", "").replace("_", " ") for k in keys], rotation=20, fontsize=7)
        ax.set(title=title, ylim=(0, 1))
        ax.legend(fontsize=7)
    for dataset, s in summary.items():
        axes[2].bar([f"{dataset}\n{r.split('/')[-1]}" for r in s["rounds"]], s["round_seconds"], label=dataset)
    axes[2].set(title="FedACnnL wall seconds per round (layer)", ylabel="seconds")
    axes[2].tick_params(axis="x", labelsize=7)
    for dataset in summary:
        for key, style in (("fedavg_acnn", "-"), ("fedavg_cnn", "--")):
            curves = [r[key]["history"] for r in document["rows"] if r["dataset"] == dataset]
            seconds = [mean(column) for column in zip(*[[h["train_seconds"] for h in c] for c in curves])]
            accuracy = [mean(column) for column in zip(*[[h["accuracy"] for h in c] for c in curves])]
            axes[3].plot(seconds, accuracy, style, marker=".", label=f"{dataset} {key.replace('_', ' ')}")
        axes[3].plot(summary[dataset]["fedacnnl_train_seconds"], summary[dataset]["fedacnnl_accuracy"], "k*",
                     markersize=10)
    axes[3].set(title="FedAvg accuracy over training time (mean of seeds)\n★: FedACnnL's accuracy and time",
                xlabel="wall seconds of training", ylim=(0, 1))
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the fedavg-cnn rounds")
    parser.add_argument("--fedavg-rounds", type=int, default=FEDAVG_ROUNDS, help="fedavg-cnn rounds at --scale 1")
    parser.add_argument("--acnn-lrs", type=float, nargs="+", default=list(ACNN_LRS),
                        help="learning rates tried for fedavg-cnn --cnn acnn (one: no sweep)")
    parser.add_argument("--sweep-rounds", type=int, default=SWEEP_ROUNDS, help="rounds each tried rate trains for")
    parser.add_argument("--datasets", nargs="+", default=[name for name, _, _ in JOBS], help="a subset of the jobs")
    parser.add_argument("--seeds", type=int, default=None, help="only the first SEEDS seeds of each job")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a loaded CPU)")
    parser.add_argument("--out", default=str(RESULTS / "fedacnnl.json"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # plaintext and small-test-split warnings: expected here
    rounds = max(1, math.ceil(args.fedavg_rounds * args.scale))
    lrs = sweep(args.acnn_lrs, args.sweep_rounds) if len(args.acnn_lrs) > 1 else {"chosen_lr": args.acnn_lrs[0]}
    rows, loads = [], [os.getloadavg()]
    for dataset, clients, seeds in JOBS:
        if dataset not in args.datasets:
            continue
        for seed in seeds[: args.seeds]:
            rows.append(measure(dataset, clients, seed, seed == seeds[0], rounds, lrs["chosen_lr"]))
            loads.append(os.getloadavg())
            document = {"rows": rows, "summary": summarise(rows), "scale": args.scale, "fedavg_rounds": rounds,
                        "fedavg_acnn_lr": lrs, "load_average": loads[-1], "load_averages_after_each_row": loads,
                        "threads": torch.get_num_threads(),
                        "protocol": "plaintext (every method)", "environment": environment(torch.device("cpu"), 0)}
            write_results(args.out, document, overwrite=True)  # after every row: a partial run still leaves its rows
            plot(document, Path(args.out).with_suffix(".png"))
            print(dataset, seed, document["summary"][dataset], flush=True)


if __name__ == "__main__":
    main()
