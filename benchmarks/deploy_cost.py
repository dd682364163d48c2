"""Deployment cost: AFL over Flower (a SuperLink and K SuperNodes as processes on this machine) versus in process,
and the same Flower app on Flower's simulation engine (Ray) for hundreds to thousands of clients.

For K SuperNodes and each protocol (plaintext, mask, he-bfv) it runs the same job twice: deployed
(``secure-afl deploy local``) and in one process (``secure-afl run``), and records wall time, the bytes
each client sent and received, each protocol stage's latency, and the protocol's share of the
deployed run (its stages' seconds over the ``flwr run`` wall time; the rest is start-up, the nodes'
first message that loads their rows, and the server's solve), and the CPU seconds of all the deployment's
processes (which a busy machine does not inflate, unlike wall time), split by program (``flwr-clientapp``: one
process per message a site answers). Target: deployed masked AFL at K = 10
within 1.5x the deployed plaintext run's wall time; with ``--target-pairs N`` it is judged on the median ratio of
N plaintext-then-mask pairs, since one run's wall time moves by about 10 % here. With ``--simulate K …`` it runs the masked job on
``secure-afl deploy simulate --nodes K`` (the SecAgg+ sparse graph the protocol picks for K clients) with a
64-wide random buffer (d = 64: 2,720-word vectors, so a thousand clients' masked inputs fit memory) and
records its time, per-stage latency and peak memory (PSS of every process of the run), each also per client.
The machine's load average is recorded before and after every run: on a shared machine it, not the
protocol, can decide the figures. Rows are merged into benchmarks/results/deploy_cost.json (a row replaces
the one of the same engine, K and protocol), which is plotted to deploy_cost.png.

    python benchmarks/deploy_cost.py [--clients 3 10] [--scale] [--protocols plaintext mask he-bfv] [--simulate 100 1000]
                                     [--target-pairs N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from secure_afl.config import RunConfig
from secure_afl.deploy.local import LocalDeployment, run_local
from secure_afl.deploy.simulate import Simulation, run_simulation
from secure_afl.results import environment, merge_rows, write_results
from secure_afl.runner import Timer, load_features, plan_run, train

RESULTS = Path(__file__).parent / "results"
JOB = {"dataset": "digits", "resolution": 32, "partition": "iid"}
SIMULATION_JOB = JOB | {"protocol": "mask", "buffer_width": 64}
TARGET = 1.5
TARGET_CLIENTS = 10


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
    return {"wall_s": wall, "processes_cpu_s": block["processes_cpu_s"],
            "processes_cpu_by_program": block["processes_cpu_by_program"], "flwr_run_s": block["flwr_run_s"],
            "hello_s": block["hello"]["seconds"],
            "stages": stages, "protocol_s": protocol_s, "protocol_share": protocol_s / block["flwr_run_s"],
            "server_timings_s": block["server_timings_s"], "bytes": _bytes(results["bytes"]),
            "accuracy": results["metrics"]["accuracy"], "processes_left_running": block["processes_left_running"]}


def simulated(config: RunConfig, nodes: int) -> dict:
    start = time.perf_counter()
    results = run_simulation(config, Simulation(nodes, stage_timeout=3000.0, connect_timeout=3000.0, run_timeout=7200.0))
    wall = time.perf_counter() - start
    block = results["deployment"]
    stages = {s["stage"]: {"seconds": s["seconds"], "upload_bytes_max": s["upload_bytes"]["max"],
                           "download_bytes_max": s["download_bytes"]["max"]} for s in block["stages"]}
    protocol_s = sum(s["seconds"] for s in stages.values())
    graph = results["bytes"]["per_round"][0]["protocol"]
    return {"wall_s": wall, "flwr_run_s": block["flwr_run_s"], "hello_s": block["hello"]["seconds"], "stages": stages,
            "protocol_s": protocol_s, "protocol_s_per_client": protocol_s / nodes,
            "flwr_run_s_per_client": block["flwr_run_s"] / nodes, "server_timings_s": block["server_timings_s"],
            "peak_memory_mib": block["peak_memory_mib"], "peak_memory_per_client_mib": block["peak_memory_per_client_mib"],
            "ray_cpus": block["cores"], "client_cpus": block["client_cpus"], "ray": block["ray"],
            "graph": {key: graph.get(key) for key in ("graph", "neighbours", "threshold", "security_log2", "failure_log2",
                                                      "targets_met")},
            "vector_length": results["bytes"]["per_round"][0].get("length"), "bytes": _bytes(results["bytes"]),
            "accuracy": results["metrics"]["accuracy"], "processes_left_running": block["processes_left_running"]}


def _bytes(report: dict) -> dict:
    """Per-client bytes as the protocol counts them (the payloads; Flower's framing is not in them)."""
    return {key: report[key] for key in ("per_client_upload_max", "per_client_download_max", "server_received_total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[3, 10], help="deployed K (none: no deployed rows)")
    parser.add_argument("--scale", action="store_true", help="add K = 30")
    parser.add_argument("--protocols", nargs="+", default=["plaintext", "mask", "he-bfv"])
    parser.add_argument("--simulate", type=int, nargs="*", default=[], help="simulated K (masked, sparse graph)")
    parser.add_argument("--target-pairs", type=int, default=0, metavar="N",
                        help="deploy plaintext then mask at K = 10, N times: the target's ratio as the median of the "
                             "N pairs' ratios (one run each swings by ~10 %% on this machine)")
    args = parser.parse_args()
    counts = list(dict.fromkeys([*args.clients, *([30] if args.scale else [])]))  # in the order given
    warnings.simplefilter("ignore")  # the protocols' parameter warnings at small K are reported by `secure-afl run`
    rows = []
    for k in args.simulate:
        config = RunConfig(clients=k, **SIMULATION_JOB)
        row = {"engine": "simulation", "clients": k, "protocol": "mask", "job": SIMULATION_JOB, "load_before": load()}
        row["in_process"] = in_process(config)
        row["simulated"] = simulated(config, k)
        row["load_after"] = load()
        row["simulated_over_in_process"] = row["simulated"]["wall_s"] / row["in_process"]["wall_s"]
        rows.append(row)
        d = row["simulated"]
        print(f"K={k:5d} simulated: {d['wall_s']:6.1f}s (flwr run {d['flwr_run_s']:6.1f}s, protocol {d['protocol_s']:.1f}s, "
              f"peak {d['peak_memory_mib']:.0f} MiB), in process {row['in_process']['wall_s']:5.1f}s, load "
              f"{row['load_before']} -> {row['load_after']}", flush=True)
        write(rows)
    for k in counts:
        for name in args.protocols:
            config = RunConfig(clients=k, protocol=name, **JOB)
            row = {"engine": "deployed", "clients": k, "protocol": name, "load_before": load()}
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
    pairs = []
    for _ in range(args.target_pairs):
        pair = {"load_before": load()}
        for name in ("plaintext", "mask"):
            d = deployed(RunConfig(clients=TARGET_CLIENTS, protocol=name, **JOB), TARGET_CLIENTS)
            pair[name] = {key: d[key] for key in ("wall_s", "flwr_run_s", "processes_cpu_s")}
        pair["ratio"] = {key: pair["mask"][key] / pair["plaintext"][key] for key in pair["mask"]}
        pairs.append(pair)
        print(f"K={TARGET_CLIENTS} pair {len(pairs)}: plaintext {pair['plaintext']['wall_s']:.1f}s, mask "
              f"{pair['mask']['wall_s']:.1f}s, ratio {pair['ratio']['wall_s']:.3f}, load before {pair['load_before']}",
              flush=True)
        write(rows, pairs)
    plot(write(rows, pairs or None))


def target_pairs(pairs: list[dict]) -> dict:
    """The target's measurement from alternating plaintext / mask deployments at K = 10: every pair and the median,
    least and largest ratio (one run's wall time on a shared 2-core machine moves by about 10 %)."""
    if not pairs:
        return {}
    summary = {"clients": TARGET_CLIENTS, "runs": pairs}
    for name, pick in (("median", statistics.median), ("min", min), ("max", max)):
        summary[name] = {key: pick(p["ratio"][key] for p in pairs) for key in pairs[0]["ratio"]}
    return summary


def _key(row: dict) -> tuple:
    return row.get("engine", "deployed"), row["clients"], row["protocol"]


def write(measured: list[dict], pairs: list[dict] | None = None) -> list[dict]:
    """Merge ``measured`` into the results file (replacing rows of the same engine, K and protocol) and, when given,
    replace its target pairs (``--target-pairs``); all its rows."""
    path = RESULTS / "deploy_cost.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    kept = previous.get("rows", [])
    if pairs is None:
        pairs = previous.get("target_pairs", {}).get("runs", [])
    for row in kept:
        row.setdefault("engine", "deployed")  # rows of schema 1 were all deployed
    rows = sorted(merge_rows(kept, measured, _key), key=_key)
    ratios = {}
    deployed_rows = [r for r in rows if _key(r)[0] == "deployed"]
    for k in dict.fromkeys(r["clients"] for r in deployed_rows):
        by = {r["protocol"]: r for r in deployed_rows if r["clients"] == k}
        if "mask" in by and "plaintext" in by:
            ratios[str(k)] = {key: by["mask"]["deployed"][key] / by["plaintext"]["deployed"][key]
                              for key in ("wall_s", "flwr_run_s", "processes_cpu_s")}
    simulated_rows = sorted((r for r in rows if _key(r)[0] == "simulation"), key=lambda r: r["clients"])
    marginal = None
    if len(simulated_rows) >= 2:
        low, high = simulated_rows[0], simulated_rows[-1]
        marginal = {"between_clients": [low["clients"], high["clients"]], **{
            f"{key}_per_added_client": (high["simulated"][key] - low["simulated"][key]) / (high["clients"] - low["clients"])
            for key in ("peak_memory_mib", "flwr_run_s", "protocol_s")}}
    document = {
        "schema_version": 2,
        "benchmark": "deploy_cost",
        "target": f"deployed mask / deployed plaintext wall time <= {TARGET} at K = 10",
        "mask_over_plaintext_deployed": ratios,
        "target_pairs": target_pairs(pairs),
        "target_met": (None if "10" not in ratios else ratios["10"]["wall_s"] <= TARGET) if not pairs
        else bool(target_pairs(pairs)["median"]["wall_s"] <= TARGET),
        "simulation": {
            "what": "secure-afl deploy simulate: the deployed ServerApp/ClientApp on Flower's Ray simulation engine, "
                    "masked AFL (the SecAgg+ sparse graph the protocol picks for K), digits at 32 px with a 64-wide "
                    "random buffer (d = 64) so a thousand clients' vectors fit memory; one Ray worker per core",
            "limits": "2 shared cores: ClientApp messages are answered two at a time, so a stage lasts about K times one "
                      "message; peak memory is the PSS of every process of the run (Ray's own processes included), "
                      "sampled every 0.5 s; timings are loaded (load average recorded per row)",
            "marginal": marginal,
            "by_clients": {str(r["clients"]): {
                "flwr_run_s": r["simulated"]["flwr_run_s"], "protocol_s": r["simulated"]["protocol_s"],
                "unmask_s": r["simulated"]["stages"]["unmask"]["seconds"], "in_process_s": r["in_process"]["wall_s"],
                "peak_memory_mib": r["simulated"]["peak_memory_mib"], "neighbours": r["simulated"]["graph"]["neighbours"],
                "threshold": r["simulated"]["graph"]["threshold"], "load_before": r["load_before"],
                "download_per_client_max": r["simulated"]["bytes"]["per_client_download_max"]}
                for r in simulated_rows},
        },
        "rows": rows,
        "environment": environment(torch.device("cpu"), seed=0) | {"load_average_at_end": load()},
    }
    RESULTS.mkdir(exist_ok=True)
    write_results(path, document, overwrite=True)
    return rows


def plot(rows: list[dict]) -> None:
    deployed_rows = [r for r in rows if _key(r)[0] == "deployed"]
    simulated_rows = sorted((r for r in rows if _key(r)[0] == "simulation"), key=lambda r: r["clients"])
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4))
    for name in dict.fromkeys(r["protocol"] for r in deployed_rows):
        mine = sorted((r for r in deployed_rows if r["protocol"] == name), key=lambda r: r["clients"])
        left.plot([r["clients"] for r in mine], [r["deployed"]["wall_s"] for r in mine], marker="o", label=f"{name} deployed")
        left.plot([r["clients"] for r in mine], [r["in_process"]["wall_s"] for r in mine], marker="x", linestyle=":",
                  label=f"{name} in process")
    left.set(xlabel="clients K (SuperNodes)", ylabel="wall seconds", title="AFL job wall time (deployed, loaded)")
    left.legend(fontsize=7)
    if deployed_rows:
        largest = [r for r in deployed_rows if r["clients"] == max(r["clients"] for r in deployed_rows)]
        for i, r in enumerate(largest):
            bottom = 0.0
            for stage, cost in r["deployed"]["stages"].items():
                middle.bar(i, cost["seconds"], bottom=bottom, label=stage)
                bottom += cost["seconds"]
        middle.set_xticks(range(len(largest)), [r["protocol"] for r in largest])
        middle.set(ylabel="seconds", title=f"per-stage latency, deployed K = {largest[0]['clients']}")
        handles, labels = middle.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        middle.legend(unique.values(), unique.keys(), fontsize=7)
    if simulated_rows:
        ks = [r["clients"] for r in simulated_rows]
        right.plot(ks, [r["simulated"]["flwr_run_s"] for r in simulated_rows], marker="o", label="flwr run (s)")
        right.plot(ks, [r["simulated"]["protocol_s"] for r in simulated_rows], marker="s", label="mask stages (s)")
        right.plot(ks, [r["in_process"]["wall_s"] for r in simulated_rows], marker="x", linestyle=":",
                   label="in process (s)")
        right.set(xscale="log", yscale="log", xlabel="virtual clients K", ylabel="seconds",
                  title="simulation (Ray, 2 cores), masked AFL d = 64")
        memory = right.twinx()
        memory.plot(ks, [r["simulated"]["peak_memory_mib"] for r in simulated_rows], marker="^", color="grey",
                    linestyle="--", label="peak memory (MiB)")
        memory.set(ylabel="peak memory, MiB")
        lines = right.get_legend_handles_labels()[0] + memory.get_legend_handles_labels()[0]
        right.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(RESULTS / "deploy_cost.png", dpi=120)


if __name__ == "__main__":
    main()
