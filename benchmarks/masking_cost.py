"""Cost of secure aggregation by pairwise masking: time and bytes versus L, n, graph and dropouts.

Four measurements, all on this machine in one run (results name the CPU):
1. The grid: vector length L ∈ {2^16, 2^18, 2^20, 2^22} × clients n ∈ {10, 100, 500} × complete vs
   k-regular graph (k chosen by ``choose_parameters``) × no dropouts vs 10% of the clients
   dropping before their masked input (the costliest case: the server rebuilds their mask keys
   and re-expands their pairwise masks). Every configuration runs the full protocol in process:
   per-client time (all four stages), server time, bytes each client sends, expansion (upload /
   8L). Configurations whose simulated work (n · (k + 1) · L mask words, or n · L words of
   memory) exceeds the budget are listed as skipped, not extrapolated; ``--scale`` raises both.
2. Side by side with Flower's SecAgg+ client (flwr 1.41, `pip install -e '.[bench]'`): its own
   stage functions (_setup, _share_keys, _collect_masked_vectors) driven directly for n = 10
   clients on the same vectors, against our client's masked-input stage. Target: ours ≤ 0.5×
   theirs at L = 2^20. (Flower masks 32-bit words with a Mersenne Twister seeded by 32 bits.)
3. Mask expansion throughput (GiB of mask words per second) next to the raw AES-256-CTR
   throughput of the `cryptography` package on the same machine.
4. The default AFL job (mnist5k, 20 clients) masked vs plaintext, total time with cached
   features, median of ``--repeats``. Target: masked ≤ 1.3× plaintext.

    python benchmarks/masking_cost.py [--scale 1] [--repeats 3] [--skip-job]
Writes benchmarks/results/masking_cost.json and masking_cost.png.
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

from protocols import FixedPoint, choose_parameters
from protocols.masking import draw_dropouts, simulate_round
from protocols.prg import MaskExpander, default_threads
from secure_afl.results import environment, write_results

RESULTS = Path(__file__).parent / "results"
LENGTHS = (1 << 16, 1 << 18, 1 << 20, 1 << 22)
CLIENTS = (10, 100, 500)
WORK_BUDGET = 1 << 34  # mask words expanded across all simulated clients, at scale 1 (≈ a minute here)
MEMORY_BUDGET = 1 << 27  # n · L words held at once, at scale 1 (≈ 3 GiB in all)
DROPOUT = {"input": 0.1}  # 10% drop before sending their masked input: the server must recover their mask keys


def vectors(n: int, length: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-1.0, 1.0, length) for c in range(n)}


def grid_row(n: int, length: int, graph: str, dropout: bool, scale: float) -> dict:
    parameters = choose_parameters(n, neighbours=n - 1 if graph == "complete" else None)
    row = {"clients": n, "length": length, "graph": graph, "dropout": 0.1 if dropout else 0.0,
           "neighbours": parameters.neighbours, "threshold": parameters.threshold}
    if graph == "k-regular" and parameters.complete:
        return {**row, "skipped": "the targets need the complete graph at this n"}
    work = n * (parameters.neighbours + 1) * length
    if work > WORK_BUDGET * scale or n * length > MEMORY_BUDGET * scale:
        return {**row, "skipped": f"over the budget at scale {scale} (work {work:.2e} mask words)"}
    vs = vectors(n, length)
    encoding = FixedPoint.for_round(n, 1.0)
    drop = draw_dropouts(list(vs), DROPOUT if dropout else {}, seed=1)
    result = simulate_round("bench", vs, encoding, parameters, drop)
    expected = np.zeros(length, dtype=np.uint64)
    for c in sorted(result.included):
        expected += encoding.encode(vs[c])
    assert np.array_equal(result.words, expected), "the masked sum must equal the fixed-point sum"
    per_client = {c: sum(cost.client_seconds.get(c, 0.0) for cost in result.costs.values()) for c in vs}
    upload = {c: sum(cost.upload.get(c, 0) for cost in result.costs.values()) for c in result.included}
    download = {c: sum(cost.download.get(c, 0) for cost in result.costs.values()) for c in result.included}
    return {
        **row,
        "included": len(result.included),
        "client_s_mean": statistics.mean(per_client[c] for c in result.included),
        "client_s_max": max(per_client.values()),
        "client_input_stage_s_mean": statistics.mean(result.costs["input"].client_seconds.values()),
        "server_s": sum(cost.server_seconds for cost in result.costs.values()),
        "upload_bytes_per_client": statistics.mean(upload.values()),
        "download_bytes_per_client": statistics.mean(download.values()),
        "expansion": statistics.mean(upload.values()) / (8 * length),
    }


def flower_client_seconds(length: int, n: int, threshold: int) -> float | None:
    """Mean time of Flower's _collect_masked_vectors over n clients, after its own setup and key sharing."""
    try:
        from flwr.client.mod.secure_aggregation.secaggplus_mod import (
            SecAggPlusState, _collect_masked_vectors, _setup, _share_keys,
        )
        from flwr.common import ConfigRecord, ndarrays_to_parameters
        from flwr.common.secure_aggregation.secaggplus_constants import Key
    except ImportError:
        return None
    ids = list(range(1, n + 1))
    states = {i: SecAggPlusState(nid=i) for i in ids}
    setup = ConfigRecord({Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: n, Key.THRESHOLD: threshold,
                          Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 1 << 22, Key.MOD_RANGE: 1 << 32,
                          Key.MAX_WEIGHT: 1000.0})
    keys = {i: _setup(states[i], setup) for i in ids}
    key_record = ConfigRecord({str(i): [keys[i][Key.PUBLIC_KEY_1], keys[i][Key.PUBLIC_KEY_2]] for i in ids})
    inbox: dict[int, list[tuple[int, bytes]]] = {i: [] for i in ids}
    for i in ids:
        out = _share_keys(states[i], key_record)
        for dst, ciphertext in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST]):
            inbox[dst].append((i, ciphertext))
    vs = vectors(n, length)
    seconds = []
    for i in ids:
        record = ConfigRecord({Key.CIPHERTEXT_LIST: [c for _, c in inbox[i]], Key.SOURCE_LIST: [s for s, _ in inbox[i]]})
        parameters = ndarrays_to_parameters([vs[i - 1]])
        start = time.perf_counter()
        _collect_masked_vectors(states[i], record, 1, parameters)
        seconds.append(time.perf_counter() - start)
    return statistics.mean(seconds)


def compare_with_flower(lengths, n: int = 10) -> list[dict]:
    rows = []
    parameters = choose_parameters(n)
    for length in lengths:
        vs = vectors(n, length)
        result = simulate_round("bench", vs, FixedPoint.for_round(n, 1.0), parameters)
        ours = statistics.mean(result.costs["input"].client_seconds.values())
        theirs = flower_client_seconds(length, n, parameters.threshold)
        rows.append({"length": length, "clients": n, "ours_input_stage_s": ours, "flower_input_stage_s": theirs,
                     "ratio": None if theirs is None else ours / theirs})
        print(f"L=2^{length.bit_length() - 1}: ours {ours * 1e3:.1f} ms, flower "
              f"{'n/a' if theirs is None else f'{theirs * 1e3:.1f} ms'}")
    return rows


def throughput(length: int = 1 << 20, masks: int = 20, repeats: int = 5) -> dict:
    """Mask expansion (AES-CTR + modular add into the vector, all cores) against bare AES-CTR
    keystream generation of the same amount by the `cryptography` package, on one core and on all."""
    from concurrent.futures import ThreadPoolExecutor

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seeds = [bytes([i]) * 32 for i in range(masks)]
    expander = MaskExpander(length)
    vector = np.zeros(length, dtype=np.uint64)
    best_mask = min(_timed(lambda: expander.apply(vector, plus=seeds)) for _ in range(repeats))
    zeros = bytes(8 * length)

    def raw(some_seeds):
        out = bytearray(8 * length + 16)
        for seed in some_seeds:
            Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update_into(zeros, out)

    threads = default_threads()

    def raw_parallel():
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(raw, [seeds[i::threads] for i in range(threads)]))

    best_raw = min(_timed(lambda: raw(seeds)) for _ in range(repeats))
    best_raw_parallel = min(_timed(raw_parallel) for _ in range(repeats))
    gib = masks * 8 * length / 2**30
    return {"length": length, "masks": masks, "threads": threads, "mask_expansion_gib_s": gib / best_mask,
            "raw_aes_ctr_one_core_gib_s": gib / best_raw, "raw_aes_ctr_all_cores_gib_s": gib / best_raw_parallel}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def default_job(repeats: int) -> dict:
    """The README's main job, plaintext vs masked, features cached; medians of ``repeats`` runs.

    The simulation runs the 20 clients one after another, so its aggregation time is the sum of
    every client's work. In a deployment clients work at the same time; ``critical_path_s`` is
    the measured time of the slowest client at each stage plus the server's, and
    ``deployment_estimate_total_s`` swaps it in for the serial aggregation time (an estimate from
    measured stage times, not a measurement of a deployment).
    """
    import warnings

    from secure_afl.config import RunConfig
    from secure_afl.runner import run

    report = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(RunConfig(protocol="plaintext"))  # fills the feature cache
        runs = {"plaintext": [], "mask": []}
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
            for protocol in runs:
                runs[protocol].append(run(RunConfig(protocol=protocol)))
    for protocol, done in runs.items():
        report[protocol] = {
            "total_s": statistics.median(r["timings_s"]["total"] for r in done),
            "aggregation_s": statistics.median(r["timings_s"]["aggregation"] for r in done),
            "accuracy": done[0]["metrics"]["accuracy"],
            "max_rel_diff_to_centralized": done[0]["metrics"]["max_rel_diff_to_centralized"],
            "upload_bytes_per_client": done[0]["bytes"]["per_client_upload_max"],
        }
    critical = statistics.median(
        sum(stage["client_seconds"]["max"] + stage["server_seconds"] for stage in r["bytes"]["per_round"][0]["protocol"]["stages"].values())
        for r in runs["mask"]
    )
    masked = report["mask"]
    masked["critical_path_s"] = critical
    masked["deployment_estimate_total_s"] = masked["total_s"] - masked["aggregation_s"] + critical
    report["ratio"] = masked["total_s"] / report["plaintext"]["total_s"]
    report["deployment_estimate_ratio"] = masked["deployment_estimate_total_s"] / report["plaintext"]["total_s"]
    return report


def plot(rows: list[dict], flower: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    done = [r for r in rows if "skipped" not in r]
    for n in CLIENTS:
        for graph, style in (("complete", "-"), ("k-regular", "--")):
            for dropout, marker in ((0.0, "o"), (0.1, "x")):
                sel = sorted((r for r in done if r["clients"] == n and r["graph"] == graph and r["dropout"] == dropout),
                             key=lambda r: r["length"])
                if not sel:
                    continue
                label = f"n={n} {graph}{' 10% drop' if dropout else ''}"
                lengths = [r["length"] for r in sel]
                axes[0].loglog(lengths, [r["client_s_mean"] for r in sel], style, marker=marker, label=label)
                axes[1].loglog(lengths, [r["server_s"] for r in sel], style, marker=marker, label=label)
    for ax, title in zip(axes[:2], ("client time (all stages, mean)", "server time")):
        ax.set(xlabel="vector length L", ylabel="seconds", title=title)
        ax.legend(fontsize=6)
    measured = [r for r in flower if r["flower_input_stage_s"] is not None]
    if measured:
        lengths = [r["length"] for r in measured]
        axes[2].loglog(lengths, [r["ours_input_stage_s"] for r in measured], marker="o", label="secure_afl")
        axes[2].loglog(lengths, [r["flower_input_stage_s"] for r in measured], marker="s", label="flwr 1.41 SecAgg+")
        axes[2].set(xlabel="vector length L", ylabel="seconds", title="client masked-input stage, n=10")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the work and memory budgets")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-job", action="store_true", help="skip the default-AFL-job comparison")
    args = parser.parse_args()
    rows = []
    for n in CLIENTS:
        for length in LENGTHS:
            for graph in ("complete", "k-regular"):
                for dropout in (False, True):
                    rows.append(grid_row(n, length, graph, dropout, args.scale))
                    r = rows[-1]
                    if "skipped" in r:
                        continue
                    print(f"n={n} L=2^{length.bit_length() - 1} {graph} k={r['neighbours']} drop={r['dropout']}: "
                          f"client {r['client_s_mean']:.3f}s server {r['server_s']:.3f}s "
                          f"upload {r['upload_bytes_per_client'] / 2**20:.2f} MiB (x{r['expansion']:.3f})")
    flower = compare_with_flower(LENGTHS[:3])
    speed = throughput()
    print(f"mask expansion {speed['mask_expansion_gib_s']:.2f} GiB/s; raw AES-256-CTR "
          f"{speed['raw_aes_ctr_one_core_gib_s']:.2f} GiB/s on one core, {speed['raw_aes_ctr_all_cores_gib_s']:.2f} on "
          f"{speed['threads']}")
    job = None if args.skip_job else default_job(args.repeats)
    if job:
        print(f"default job: plaintext {job['plaintext']['total_s']:.2f}s, mask {job['mask']['total_s']:.2f}s "
              f"(x{job['ratio']:.2f}; clients concurrently, estimated x{job['deployment_estimate_ratio']:.2f})")
    document = {
        "schema_version": 1,
        "benchmark": "masking_cost",
        "targets": {"flower_ratio_at_2^20": "<= 0.5", "default_job_ratio": "<= 1.3"},
        "scale": args.scale,
        "grid": rows,
        "flower_comparison": flower,
        "throughput": speed,
        "default_job": job,
        "environment": environment(torch.device("cpu"), seed=0),
    }
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "masking_cost.json", document, overwrite=True)
    plot(rows, flower, RESULTS / "masking_cost.png")


if __name__ == "__main__":
    main()
