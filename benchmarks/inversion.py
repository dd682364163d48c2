"""Feature inversion on AFL transcripts: recovered features back to images, against two baselines.

For each data set (mnist5k; the shipped CIFAR-10 / CIFAR-100 / ImageNet samples), plaintext AFL (α = 0.1,
seed 0): the ``invert`` attack on the singleton features, on the ``gram`` rows and on the true features
(the ORACLE: the image stage alone), with the learned decoder and, on the singletons, the decoder refined
by optimisation through the backbone. Statistics matching (``match-statistics``: dummy images fitted to
a small client's G_k, H_k, started from the decoded Gram rows) attacks the clients of the same job that hold
at most 8 samples (``--matched-clients`` of them at most; on mnist5k's default job one client of 5), beside the
closed-form route (the ``gram`` rows decoded) scored on the same targets. Per setting: targets, PSNR
and SSIM against the class-mean and random same-class baselines, pixel- and feature-space
identifiability, top-5, feature cosine, seconds per image.

A data set the runner refuses keeps the runner's reason under ``not_run`` for the AFL-job settings: the
CIFAR-100 and ImageNet samples, 20 images in 18 and 19 classes, leave no test split, so there is no AFL job to
attack, no public image to train a decoder on and no class-mean image to compare with. What still runs there
is the ORACLE optimisation (``suite.oracle_optimisation``): the true feature of every sample image, from the
feature cache, inverted through the frozen backbone (TV, box, BatchNorm prior; ``--oracle-steps``,
``--oracle-restarts``, ``--oracle-learning-rate``, ``--oracle-images`` size it to the CPU), source ``true``,
method ``optimise``, an upper bound for the image stage with no transcript involved; its baselines are the mean of the other sample
images, a random other sample image, and a random same-class one only where the class has another image.

Rows are MERGED into benchmarks/results/inversion.json by (dataset, source, method): a rerun setting
replaces its row in place, every other row stays where it is (the README's figure markers index them),
and the file's run-level fields (settings, load, environment) describe the latest run that measured
AFL-job rows; oracle rows carry their own settings, torch threads and load. The file is rewritten after
every data set, with one grid per setting and inversion.png (identified fraction against the target's
class size on its client).

    python benchmarks/inversion.py [--datasets mnist5k samples-cifar10 ...] [--optimise-steps 60] [--match-steps 60]
                                    [--matched-clients 8] [--settings singleton:decoder gram:decoder ...]
                                    [--oracle-steps 100] [--oracle-restarts 1] [--oracle-learning-rate 0.05]
                                    [--oracle-images N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from attacks.grid import save_grid  # noqa: E402
from attacks.inversion.optimise import OptimiseSettings  # noqa: E402
from attacks.inversion.statistics_matching import MatchSettings  # noqa: E402
from attacks.suite import InversionOptions, attack_run, oracle_optimisation  # noqa: E402
from secure_afl.config import RunConfig  # noqa: E402
from secure_afl.errors import ConfigError  # noqa: E402
from secure_afl.results import merge_rows, write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CLIENTS = {"mnist5k": 20, "samples-cifar10": 4, "samples-cifar100": 4, "samples-imagenet": 4}
SETTINGS = (("singleton", "decoder"), ("gram", "decoder"), ("true", "decoder"), ("singleton", "decoder+optimise"))
MATCHED_CLIENTS = 8  # small clients statistics matching attacks per data set (the CPU budget)
KEEP = ("targets", "matched", "psnr_mean", "psnr_median", "ssim_mean", "identified_fraction", "top5_fraction",
        "feature_identified_fraction", "feature_cosine_mean", "baseline_psnr_mean", "by_method", "baselines",
        "by_class_size")
KEY = ("dataset", "source", "method")  # a row's setting: a rerun replaces the row of the same key, in place


def row(config: RunConfig, attack: str, options: InversionOptions, grid: Path) -> tuple[dict, dict]:
    """(the benchmark's row, the attack's per-target rows)."""
    started = time.perf_counter()
    document, pictures = attack_run([attack], config, inversion=options)
    if attack in pictures:
        save_grid(grid, pictures[attack])
    metrics = document["metrics"]
    targets = metrics.get("matched") or 0
    return {"dataset": config.dataset, "clients": config.clients, "partition": config.partition, "alpha": config.alpha,
            "seed": config.seed, "attack": attack, "source": document["source"],
            "method": document["method"],
            "oracle": document["oracle"], "applicable": document["applicable"], "reason": document["reason"],
            "targets_rule": document["targets"], "public_images": document["public_images"],
            "decoder": document["decoder"], "metrics": {k: metrics[k] for k in KEEP if k in metrics},
            "attack_seconds": document["seconds"],
            "seconds_per_image": document["seconds"] / targets if targets else None,
            "wall_seconds": time.perf_counter() - started, "load_average_1min": round(os.getloadavg()[0], 2), "grid": grid.name if attack in pictures else None,
            "environment": document["environment"]}, document.get("per_target") or []


def on_targets(per_target: list[dict], targets: set[int]) -> dict:
    """The closed-form route's figures restricted to the samples statistics matching was scored on."""
    rows = [r for r in per_target if r["sample"] in targets]
    if not rows:
        return {"targets": len(targets), "matched": 0}
    return {"targets": len(targets), "matched": len(rows), "psnr_mean": float(np.mean([r["score"] for r in rows])),
            "identified_fraction": sum(r["identified"] for r in rows) / len(targets),
            "feature_identified_fraction": sum(r["feature_identified"] for r in rows) / len(targets),
            "feature_cosine_mean": float(np.mean([r["feature_cosine"] for r in rows]))}


def report(r: dict) -> None:
    m = r["metrics"]
    if not r.get("afl_job", True):
        base = m["baselines"]
        print(f"{r['dataset']:17s} ORACLE (no job) true → optimise   targets {m['targets']:4d}  "
              f"PSNR {m['psnr_mean']:.2f} dB (mean of the others {base['dataset_mean']['psnr_mean']:.2f}, "
              f"random other {base['random_other']['psnr_mean']:.2f})  identified {m['identified_fraction']:.3f}  "
              f"feature-space {m['feature_identified_fraction']:.3f}  cosine {m['feature_cosine_mean']:.3f}  "
              f"{r['seconds_per_image']:.1f} s/image, load {r['load_average_1min']}", flush=True)
        return
    label = f"{r['dataset']:17s} {r['clients']:4d} clients {r['source']:10s} {r['method']:18s}"
    if m.get("psnr_mean") is None:
        print(f"{label} not applicable: {r['reason']}", flush=True)
        return
    print(f"{label} targets {m['targets']:4d}  PSNR {m['psnr_mean']:.2f} dB (class mean {m['baseline_psnr_mean']:.2f})"
          f"  identified {m['identified_fraction']:.3f} (class mean {m['baselines']['class_mean']['identified_fraction']:.3f})"
          f"  top-5 {m['top5_fraction']:.3f}  feature-space {m['feature_identified_fraction']:.3f}  "
          f"({r['wall_seconds']:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(CLIENTS))
    parser.add_argument("--optimise-steps", type=int, default=60)
    parser.add_argument("--match-steps", type=int, default=60)
    parser.add_argument("--matched-clients", type=int, default=MATCHED_CLIENTS,
                        help="small clients statistics matching attacks per data set")
    parser.add_argument("--settings", nargs="+", default=[f"{source}:{method}" for source, method in SETTINGS],
                        help="the invert settings to run, as source:method (the CPU budget)")
    parser.add_argument("--oracle-steps", type=int, default=OptimiseSettings.steps,
                        help="Adam steps of the ORACLE optimisation on a data set no AFL job runs on")
    parser.add_argument("--oracle-restarts", type=int, default=OptimiseSettings.restarts)
    parser.add_argument("--oracle-learning-rate", type=float, default=OptimiseSettings.learning_rate)
    parser.add_argument("--oracle-images", type=int, default=None,
                        help="optimise only the first N images there (the CPU budget; all by default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on a shared 2-core CPU one is far faster than two for small models)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "inversion.json", help="the JSON rows are merged into")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(args.threads)
    rows, not_run = [], {}
    started, load_at_start = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    optimise = OptimiseSettings(steps=args.optimise_steps)
    matching = MatchSettings(steps=args.match_steps, clients=args.matched_clients)
    oracle = OptimiseSettings(steps=args.oracle_steps, restarts=args.oracle_restarts,
                              learning_rate=args.oracle_learning_rate)
    settings = [tuple(setting.split(":", 1)) for setting in args.settings]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {[f'{s}:{m}' for s, m in SETTINGS]}")
    for dataset in args.datasets:
        try:
            rows += dataset_rows(dataset, settings, optimise, matching, args.device)
        except ConfigError as error:  # the runner refuses the data set (e.g. no test split): say so in the JSON
            not_run[dataset] = (f"AFL-job settings ({', '.join(args.settings)}, statistics matching) not run: {error}; "
                                "the ORACLE optimisation of the true features runs instead (source true, method optimise)")
            print(f"{dataset}: AFL job not run: {error}", flush=True)
            rows.append(oracle_row(dataset, oracle, args.oracle_images, args.device, args.out.parent))
            report(rows[-1])
        run = {"settings": {"optimise_steps": args.optimise_steps, "match_steps": args.match_steps,
                            "matched_clients": args.matched_clients, "datasets": args.datasets,
                            "invert_settings": args.settings, "matching": asdict(matching)},
               "total_seconds": time.perf_counter() - started, "load_average_at_start": load_at_start,
               "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
               "environment": rows[-1]["environment"] if rows else None}
        merged = merge(args.out, rows, not_run, run)
        plot(merged["rows"], args.out.with_suffix(".png"))


def oracle_row(dataset: str, settings: OptimiseSettings, images: int | None, device: str, folder: Path) -> dict:
    """The ORACLE optimisation on a data set no AFL job runs on, as a benchmark row (and its grid)."""
    started = time.perf_counter()
    config = RunConfig(dataset=dataset, device=device)
    document, picture = oracle_optimisation(config, settings, limit=images)
    grid = folder / f"inversion-{dataset}-true-optimise.png"
    save_grid(grid, picture)
    metrics = document["metrics"]
    return {"dataset": dataset, "clients": None, "partition": None, "alpha": None, "seed": config.seed,
            "attack": "invert", "source": document["source"], "method": document["method"], "oracle": True,
            "afl_job": False, "applicable": True, "reason": "", "threat_model": document["threat_model"],
            "metric": document["metric"], "threshold": document["threshold"],
            "identification": document["identification"], "targets_rule": document["targets"],
            "public_images": None, "decoder": None,
            "options": {"optimise": document["optimise"], "images": metrics["targets"], "image_size": document["image_size"],
                        "backbone": config.backbone, "resolution": config.resolution,
                        "note": "no decoder: no public image of the domain exists; the image is optimised at the side "
                                "the evaluator scores at and resized to the backbone's resolution inside the encoder"},
            "metrics": {k: metrics[k] for k in KEEP if k in metrics},
            "attack_seconds": document["seconds"], "seconds_per_image": document["seconds"] / metrics["targets"],
            "wall_seconds": time.perf_counter() - started, "load_average_1min": round(os.getloadavg()[0], 2),
            "torch_threads": torch.get_num_threads(), "grid": grid.name, "environment": document["environment"]}


def merge(path: Path, measured: list[dict], not_run: dict[str, str], run: dict) -> dict:
    """Merge ``measured`` into the results file at ``path``: a row replaces the one with the same KEY where it
    stands, a new one is appended, every other row stays (README figures index the rows). ``not_run`` (data set →
    why its AFL-job settings did not run) joins the file's and a data set leaves it once it has AFL-job rows. The
    run-level fields describe the rows they came with, so ``run`` replaces them only when it measured AFL-job rows."""
    kept = json.loads(path.read_text()) if path.exists() else {"schema_version": 1, "benchmark": "inversion", "rows": []}
    rows = merge_rows(kept["rows"], measured, lambda r: tuple(r[k] for k in KEY))
    with_job = {r["dataset"] for r in rows if r.get("afl_job", True)}
    document = {**kept, **(run if any(r.get("afl_job", True) for r in measured) else {}), "rows": rows,
                "key": list(KEY),
                "not_run": {name: reason for name, reason in {**kept.get("not_run", {}), **not_run}.items()
                            if name not in with_job}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_results(path, document, overwrite=True)
    return document


def dataset_rows(dataset: str, settings: list[tuple[str, str]], optimise: OptimiseSettings, matching: MatchSettings,
                 device: str) -> list[dict]:
    """The invert settings and statistics matching on one data set's default AFL job."""
    rows, closed = [], []
    config = RunConfig(protocol="plaintext", dataset=dataset, clients=CLIENTS.get(dataset, 20), device=device)
    for source, method in settings:
        grid = RESULTS / f"inversion-{dataset}-{source}-{method.replace('+', '-')}.png"
        done, per_target = row(config, "invert", InversionOptions(source, method, optimise=optimise), grid)
        closed = per_target if source == "gram" else closed
        rows.append(done)
        report(done)
    matched, per_target = row(config, "match-statistics", InversionOptions(matching=matching),
                              RESULTS / f"inversion-{dataset}-statistics-matching.png")
    matched["closed_form_on_same_targets"] = {"route": "gram rows → decoder (the row above)",
                                              **on_targets(closed, {r["sample"] for r in per_target})}
    rows.append(matched)
    report(matched)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Identified fraction of the gram rows' and the matched images against the size of the target's class on its
    client."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        sizes = r["metrics"].get("by_class_size") or (r["metrics"].get("by_method") or {}).get("decoder", {}).get(
            "by_class_size")
        if r["source"] not in ("gram", "statistics") or not sizes:
            continue
        keys = sorted(sizes, key=int)
        axis.plot([int(k) for k in keys], [sizes[k]["identified"] / sizes[k]["targets"] for k in keys],
                  "s--" if r["source"] == "statistics" else "o-",
                  label=f"{r['dataset']}, {r['clients']} clients ({r['source']} → {r['method']})")
    axis.set_xscale("log")
    axis.set_xlabel("samples of the target's class on its client")
    axis.set_ylabel("identified fraction (pixel nearest neighbour)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
