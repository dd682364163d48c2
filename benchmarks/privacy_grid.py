"""What a curious server gets, and what accuracy the clients keep, for each setting one might deploy.

protocol × defence × Dirichlet α × clients K on mnist5k (and the shipped CIFAR-10 samples
at a few clients): every statistics attack's success (samples recovered exactly, identified in the
candidate pool, class means recovered, membership AUC) beside the accuracy each setting keeps, with
each attack's baseline. Every row is one ``attack_run``: the case runs the job through the real
protocol, the attacks see only its transcript, the evaluator alone holds the data.

Defences: none; DP on the statistics (local placement under every protocol, distributed placement
under the secure ones) at ε ∈ {1, 4, 16}; the minimum-count rule at m ∈ {2, 5}. The full product
(``--full``) is 3 protocols × 9 defences × 3 α × 2 K, many CPU-hours on 2 cores. The default
(≈ 25 min on 2 cores) runs every undefended setting and a cross-section of the defended ones:
- the secure protocols run the defences that act on what they reveal (none and distributed DP): a
  client-side defence acts on its own statistics, which the secure sum merely adds up;
- he-bfv runs at K = 10 only: HE at K = 100 is the cost benchmark's business (he_cost.py);
- DP rows skip α = 0.05, and plaintext DP runs at K = 100 only at ε = 4: without counts every
  per-client attack eigendecomposes each client's noisy 1280 × 1280 Gram, ≈ 8 CPU-minutes a row;
- the minimum-count rule runs where clients hold rare classes: α ∈ {0.05, 0.1} at K = 100 and
  α = 0.1 at K = 10.
The JSON lists every setting it left out and why.

Rows are written as they finish; ``--resume`` keeps the rows of an earlier run with the same
settings, so the grid can be built in pieces. ``benchmarks/privacy_report.py`` (or ``secure-afl
report``) turns the JSON into benchmarks/results/privacy_report.md.

    python benchmarks/privacy_grid.py [--jobs 2] [--full] [--resume] [--clients 10 100] [--alphas 0.05 0.1 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
OUTPUT = RESULTS / "privacy_grid.json"
ATTACKS = ["counts", "class-means", "singleton", "gram", "membership"]
EXACT = 0.9999  # a sample counts as recovered exactly at cosine ≥ this (the singleton attack's threshold)
EPSILONS = (1.0, 4.0, 16.0)
MINIMUMS = (2, 5)
DELTA = 1e-5
PROTOCOLS = ("plaintext", "mask", "he-bfv")
SHOWCASE = {"dataset": "mnist5k", "protocol": "plaintext", "defence": "none", "alpha": 0.1, "clients": 10}


def defences(protocol: str) -> list[dict]:
    """Every defence that applies under ``protocol`` (distributed DP needs a sum the server cannot open)."""
    chosen = [{"name": "none"}]
    chosen += [{"name": f"dp-local ε={e:g}", "dp_epsilon": e, "dp_placement": "local"} for e in EPSILONS]
    if protocol != "plaintext":
        chosen += [{"name": f"dp-distributed ε={e:g}", "dp_epsilon": e, "dp_placement": "distributed"}
                   for e in EPSILONS]
    chosen += [{"name": f"min-count m={m}", "min_class_count": m} for m in MINIMUMS]
    return chosen


def settings(args) -> tuple[list[dict], list[dict]]:
    """(the settings to run, the settings the default scale leaves out)."""
    chosen, left_out = [], []
    partitions = [("mnist5k", a, k) for a in args.alphas for k in args.clients]
    partitions += [(d, 1.0, k) for d in ("samples-cifar10",) for k in (2, 4)]
    for protocol in args.protocols:
        for defence in defences(protocol):
            for dataset, alpha, clients in partitions:
                setting = {"dataset": dataset, "protocol": protocol, "defence": defence["name"], "alpha": alpha,
                           "clients": clients, "options": {k: v for k, v in defence.items() if k != "name"}}
                reason = None if args.full else _left_out(setting)
                (left_out if reason else chosen).append({**setting, **({"reason": reason} if reason else {})})
    left_out.append({"dataset": "samples-imagenet", "reason": "20 images in 19 classes leave no test split, so no "
                                                              "accuracy can be measured (the run refuses it)"})
    return chosen, left_out


def _left_out(setting: dict) -> str | None:
    secure = setting["protocol"] != "plaintext"
    if secure and not (setting["defence"] == "none" or setting["defence"].startswith("dp-distributed")):
        return "a client-side defence under a secure protocol: the sum adds up the defended statistics (--full runs it)"
    if setting["protocol"] == "he-bfv" and setting["clients"] > 10:
        return "he-bfv at K > 10: HE cost is measured by he_cost.py (--full runs it)"
    if setting["dataset"] != "mnist5k" and (secure or setting["defence"] != "none"):
        return "the shipped sample sets run the undefended plaintext job only (--full runs the rest)"
    options, alpha, clients = setting["options"], setting["alpha"], setting["clients"]
    if "dp_epsilon" in options and alpha == 0.05:
        return "DP rows skip α = 0.05 at this scale (--full runs it)"
    if options.get("dp_placement") == "local" and clients > 10 and options["dp_epsilon"] != 4.0:
        return ("plaintext DP at K > 10 runs at ε = 4 only: every per-client attack eigendecomposes each client's noisy "
                "Gram (--full runs it)")
    if "min_class_count" in options and (alpha, clients) not in ((0.05, 100), (0.1, 100), (0.1, 10)):
        return "the minimum-count rule runs where clients hold rare classes at this scale (--full runs it)"
    return None


def key(setting: dict) -> str:
    return json.dumps({k: setting[k] for k in ("dataset", "protocol", "defence", "alpha", "clients")}, sort_keys=True)


def run_setting(setting: dict, pictures_dir: str | None = None) -> dict:
    """One row: the attacks' success and the accuracy kept. Runs in a worker process."""
    import torch

    from attacks.report import grid_row
    from attacks.suite import attack_run, save_picture
    from secure_afl.config import RunConfig
    from secure_afl.runner import PlaintextAggregationWarning

    torch.set_num_threads(1)  # one core per worker: --jobs sets the parallelism
    warnings.simplefilter("ignore", PlaintextAggregationWarning)
    config = replace(RunConfig(protocol=setting["protocol"], dataset=setting["dataset"], clients=setting["clients"],
                               alpha=setting["alpha"], device="cpu"), **setting["options"])
    if "dp_epsilon" in setting["options"]:
        config = replace(config, dp_delta=DELTA)
    started = time.perf_counter()
    document, pictures = attack_run(ATTACKS, config)
    seconds = time.perf_counter() - started
    if pictures_dir is not None:  # the showcase setting: its image grids and ROC curves
        for name, picture in pictures.items():
            save_picture(Path(pictures_dir) / f"privacy_grid-{name}.png", picture)
    return {**{k: v for k, v in setting.items() if k != "options"}, "options": setting["options"],
            **grid_row(document, EXACT), "seconds": seconds}


def difference_rows() -> list[dict]:
    """The retrying server (the difference attack) against clients with and without their contribution ledgers,
    under each secure protocol, on mnist5k K = 10, α = 0.1 with two victims."""
    from attacks.suite import attack_run
    from secure_afl.config import RunConfig

    rows = []
    for protocol in ("mask", "he-bfv"):
        for defended in (False, True):
            config = RunConfig(protocol=protocol, clients=10, alpha=0.1, device="cpu")
            document, _ = attack_run(["difference"], config, victims=(3, 7), defended=defended)
            report = document["attacks"]["difference"]
            rows.append({"protocol": protocol, "clients": 10, "alpha": 0.1, "defended": defended,
                         "recovered_fraction": report["metrics"]["recovered_fraction"],
                         "baseline_recovered_fraction": report["metrics"]["baseline"]["recovered_fraction"],
                         "refusals": sorted({r["error"] for r in report.get("refusals", [])}),
                         "threat_model": report["threat_model"], "threshold": report["threshold"]})
            print(f"difference {protocol:7s} ledgers {'on ' if defended else 'off'} recovered "
                  f"{rows[-1]['recovered_fraction']:.3f} refusals {rows[-1]['refusals']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 1.0])
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--full", action="store_true", help="every protocol × defence × α × K (hours on 2 cores)")
    parser.add_argument("--jobs", type=int, default=2, help="settings run at once, one core each")
    parser.add_argument("--resume", action="store_true", help="keep finished rows of an earlier run")
    parser.add_argument("--out", default=str(OUTPUT))
    args = parser.parse_args()
    from secure_afl.results import write_results

    chosen, left_out = settings(args)
    done = {}
    if args.resume and Path(args.out).exists():
        done = {key(row): row for row in json.loads(Path(args.out).read_text())["rows"]}
    from attacks.protocol.catalogue import active_server_outcomes

    earlier = json.loads(Path(args.out).read_text()) if done else {}
    active = earlier.get("active_server") or active_server_outcomes()
    difference = earlier.get("difference") or difference_rows()
    todo = [s for s in chosen if key(s) not in done]
    rows = [done[key(s)] for s in chosen if key(s) in done]
    failed: list[dict] = []
    print(f"{len(chosen)} settings ({len(rows)} kept from {args.out}), {len(left_out)} left out at this scale",
          flush=True)
    started = time.perf_counter()

    def save() -> None:
        document = {"schema_version": 1, "benchmark": "privacy_grid", "attacks": ATTACKS, "exact_threshold": EXACT,
                    "dp_delta": DELTA, "rows": rows, "failed": failed, "left_out": left_out, "difference": difference,
                    "active_server": active,
                    "environment": rows[-1]["environment"] if rows else None,
                    "seconds_this_run": time.perf_counter() - started}
        write_results(args.out, document, overwrite=True)

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {pool.submit(run_setting, s, str(RESULTS) if _is_showcase(s) else None): s for s in todo}
        for future in as_completed(futures):
            try:
                row = future.result()
            except Exception as exc:  # recorded and reported, never a silent gap: the run exits non-zero
                failed.append({**futures[future], "error": f"{type(exc).__name__}: {exc}"})
                print(f"FAILED {key(futures[future])}: {failed[-1]['error']}", flush=True)
                continue
            rows.append(row)
            save()
            print(_line(row), flush=True)
    save()
    if failed:
        raise SystemExit(f"{len(failed)} settings failed (listed under 'failed' in {args.out}); rerun with --resume")


def _is_showcase(setting: dict) -> bool:
    return all(setting[k] == v for k, v in SHOWCASE.items())


def _line(row: dict) -> str:
    membership = row["attacks"]["membership"]["metrics"].get("auc")
    return (f"{row['protocol']:9s} {row['defence']:20s} {row['dataset']:16s} K={row['clients']:<4d} "
            f"α={row['alpha']:<5g} accuracy {row['model']['accuracy']:.3f}  exact {row['samples_recovered_exactly']:5d}"
            f"  identified {row['samples_identified']:5d}  membership AUC "
            f"{'—' if membership is None else f'{membership:.3f}'}  ({row['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
