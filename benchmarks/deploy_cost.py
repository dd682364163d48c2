"""Deployment cost: AFL over Flower (a SuperLink and K SuperNodes as processes on this machine) versus in process.

For K SuperNodes and each protocol (plaintext, mask, he-bfv) it runs the same job twice: deployed
(``secure-afl deploy local``) and in one process (``secure-afl run``), and records wall time, the bytes
each client sent and received, each protocol stage's latency, and the protocol's share of the
deployed run (its stages' seconds over the ``flwr run`` wall time; the rest is start-up, the nodes'
first message that loads their rows, and the server's solve), and the CPU seconds of all the deployment's
processes (which a busy machine does not inflate, unlike wall time). Target: deployed masked AFL at K = 10
within 1.5x the deployed plaintext run's wall time. The machine's load average is recorded before
and after every run: on a shared machine it, not the protocol, can decide the figures. Writes
benchmarks/results/deploy_cost.json and .png.

    python benchmarks/deploy_cost.py [--clients 3 10] [--scale] [--protocols plaintext mask he-bfv]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from secure_afl.config import RunConfig
from secure_afl.deploy.local import LocalDeployment, run_local
from secure_afl.results import environment, write_results
from secure_afl.runner import Timer, load_features, plan_run, train

RESULTS = Path(__file__).parent / "results"
JOB = {"dataset": "digits", "resolution": 32, "partition": "iid"}
TARGET = 1.5


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def in_process(config: RunConfig) -> dict:
    start, cpu = time.perf_counter(), cpu_seconds()
    timer = Timer()
    plan = plan_run(config)
    features = load_features(plan, timer)
    training = train(plan, features, timer)
    return {"wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu, "timings_s": dict(timer.seconds),
            "bytes": _bytes(training.bytes), "accuracy": training.metrics["accuracy"]}


def deployed(config: RunConfig, nodes: int) -> dict:
    start = time.perf_counter()
    results = run_local(config, LocalDeployment(nodes, stage_timeout=600.0, connect_timeout=900.0))
    wall = time.perf_counter() - start
    block = results["deployment"]
    stages = {s["stage"]: {"seconds": s["seconds"], "upload_bytes_max": s["upload_bytes"]["max"],
                           "download_bytes_max": s["download_bytes"]["max"]} for s in block["stages"]}
    protocol_s = sum(s["seconds"] for s in stages.values())
    return {"wall_s": wall, "processes_cpu_s": block["processes_cpu_s"], "flwr_run_s": block["flwr_run_s"], "hello_s": block["hello"]["seconds"],
            "stages": stages, "protocol_s": protocol_s, "protocol_share": protocol_s / block["flwr_run_s"],
            "server_timings_s": block["server_timings_s"], "bytes": _bytes(results["bytes"]),
            "accuracy": results["metrics"]["accuracy"], "processes_left_running": block["processes_left_running"]}


def _bytes(report: dict) -> dict:
    """Per-client bytes as the protocol counts them (the payloads; Flower's framing is not in them)."""
    return {key: report[key] for key in ("per_client_upload_max", "per_client_download_max", "server_received_total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--scale", action="store_true", help="add K = 30")
    parser.add_argument("--protocols", nargs="+", default=["plaintext", "mask", "he-bfv"])
    args = parser.parse_args()
    counts = list(dict.fromkeys([*args.clients, *([30] if args.scale else [])]))  # in the order given
    warnings.simplefilter("ignore")  # the protocols' parameter warnings at small K are reported by `secure-afl run`
    rows = []
    for k in counts:
        for name in args.protocols:
            config = RunConfig(clients=k, protocol=name, **JOB)
            row = {"clients": k, "protocol": name, "load_before": load()}
            row["in_process"] = in_process(config)
            row["deployed"] = deployed(config, k)
            row["load_after"] = load()
            row["deployed_over_in_process"] = row["deployed"]["wall_s"] / row["in_process"]["wall_s"]
            rows.append(row)
            d = row["deployed"]
            print(f"K={k:3d} {name:9s}: deployed {d['wall_s']:6.1f}s (flwr run {d['flwr_run_s']:6.1f}s, protocol "
                  f"{d['protocol_share']:.0%}, {d['processes_cpu_s']:.0f} CPU s), in process "
                  f"{row['in_process']['wall_s']:5.1f}s, load {row['load_before']} -> {row['load_after']}", flush=True)
            write(rows)  # after every run: a long benchmark interrupted keeps what it measured
    plot(rows, counts, args.protocols)


def write(rows: list[dict]) -> None:
    ratios = {}
    for k in dict.fromkeys(r["clients"] for r in rows):
        by = {r["protocol"]: r for r in rows if r["clients"] == k}
        if "mask" in by and "plaintext" in by:
            ratios[str(k)] = {key: by["mask"]["deployed"][key] / by["plaintext"]["deployed"][key]
                              for key in ("wall_s", "flwr_run_s", "processes_cpu_s")}
    document = {
        "schema_version": 1,
        "benchmark": "deploy_cost",
        "target": f"deployed mask / deployed plaintext wall time <= {TARGET} at K = 10",
        "mask_over_plaintext_deployed": ratios,
        "target_met": None if "10" not in ratios else ratios["10"]["wall_s"] <= TARGET,
        "rows": rows,
        "environment": environment(torch.device("cpu"), seed=0) | {"load_average_at_end": load()},
    }
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "deploy_cost.json", document, overwrite=True)


def plot(rows: list[dict], counts: list[int], protocols: list[str]) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in protocols:
        mine = sorted((r for r in rows if r["protocol"] == name), key=lambda r: r["clients"])
        left.plot([r["clients"] for r in mine], [r["deployed"]["wall_s"] for r in mine], marker="o", label=f"{name} deployed")
        left.plot([r["clients"] for r in mine], [r["in_process"]["wall_s"] for r in mine], marker="x", linestyle=":",
                  label=f"{name} in process")
    left.set(xlabel="clients K (SuperNodes)", ylabel="wall seconds", title="AFL job wall time")
    left.legend(fontsize=7)
    largest = [r for r in rows if r["clients"] == max(counts)]
    for i, r in enumerate(largest):
        bottom = 0.0
        for stage, cost in r["deployed"]["stages"].items():
            right.bar(i, cost["seconds"], bottom=bottom, label=stage if i == 0 or stage not in ("plaintext",) else None)
            bottom += cost["seconds"]
    right.set_xticks(range(len(largest)), [r["protocol"] for r in largest])
    right.set(ylabel="seconds", title=f"per-stage latency, K = {max(counts)}")
    handles, labels = right.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    right.legend(unique.values(), unique.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "deploy_cost.png", dpi=120)


if __name__ == "__main__":
    main()
