"""Feature inversion on AFL transcripts: recovered features back to images, against two baselines.

For each data set (mnist5k; the shipped CIFAR-10 / CIFAR-100 / ImageNet samples, where a split
leaves public images to train on), plaintext AFL (α = 0.1, seed 0): the ``invert`` attack on the
singleton features, on the ``gram`` rows and on the true features (the ORACLE: the image stage
alone), with the learned decoder and, on the singletons, the decoder refined by optimisation
through the backbone. Per setting: targets, PSNR and SSIM against the class-mean and random
same-class baselines, pixel- and feature-space identifiability, top-5, feature cosine, seconds per
image. Statistics matching (dummy images fitted to a client's G_k, H_k) is not implemented yet and
is recorded as such. Writes benchmarks/results/inversion.json, one grid per setting and
inversion.png (identified fraction against the target's class size on its client, gram rows).

    python benchmarks/inversion.py [--datasets mnist5k samples-cifar10 ...] [--optimise-steps 60]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attacks.grid import save_grid  # noqa: E402
from attacks.inversion.optimise import OptimiseSettings  # noqa: E402
from attacks.suite import InversionOptions, attack_run  # noqa: E402
from secure_afl.config import RunConfig  # noqa: E402
from secure_afl.results import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CLIENTS = {"mnist5k": 20, "samples-cifar10": 4, "samples-cifar100": 4, "samples-imagenet": 4}
SETTINGS = (("singleton", "decoder"), ("gram", "decoder"), ("true", "decoder"), ("singleton", "decoder+optimise"))
KEEP = ("targets", "matched", "psnr_mean", "psnr_median", "ssim_mean", "identified_fraction", "top5_fraction",
        "feature_identified_fraction", "feature_cosine_mean", "baseline_psnr_mean", "by_method", "baselines",
        "by_class_size")


def row(config: RunConfig, source: str, method: str, optimise_steps: int, grid: Path) -> dict:
    started = time.perf_counter()
    options = InversionOptions(source, method, optimise=OptimiseSettings(steps=optimise_steps))
    document, pictures = attack_run(["invert"], config, inversion=options)
    if "invert" in pictures:
        save_grid(grid, pictures["invert"])
    metrics = document["metrics"]
    targets = metrics.get("matched") or 0
    return {"dataset": config.dataset, "clients": config.clients, "alpha": config.alpha, "seed": config.seed,
            "source": source, "method": method, "oracle": document["oracle"], "applicable": document["applicable"],
            "reason": document["reason"], "public_images": document["public_images"], "decoder": document["decoder"],
            "metrics": {k: metrics[k] for k in KEEP if k in metrics},
            "attack_seconds": document["seconds"],
            "seconds_per_image": document["seconds"] / targets if targets else None,
            "wall_seconds": time.perf_counter() - started, "grid": grid.name if "invert" in pictures else None,
            "environment": document["environment"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(CLIENTS))
    parser.add_argument("--optimise-steps", type=int, default=60)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    rows = []
    started = time.perf_counter()
    for dataset in args.datasets:
        config = RunConfig(protocol="plaintext", dataset=dataset, clients=CLIENTS.get(dataset, 20), device=args.device)
        for source, method in SETTINGS:
            grid = RESULTS / f"inversion-{dataset}-{source}-{method.replace('+', '-')}.png"
            rows.append(row(config, source, method, args.optimise_steps, grid))
            m = rows[-1]["metrics"]
            if m.get("psnr_mean") is None:
                print(f"{dataset:17s} {source:9s} {method:16s} not applicable: {rows[-1]['reason']}", flush=True)
                continue
            print(f"{dataset:17s} {source:9s} {method:16s} targets {m['targets']:4d}  PSNR {m['psnr_mean']:.2f} dB "
                  f"(class mean {m['baseline_psnr_mean']:.2f})  identified {m['identified_fraction']:.3f} "
                  f"(class mean {m['baselines']['class_mean']['identified_fraction']:.3f})  top-5 {m['top5_fraction']:.3f}"
                  f"  feature-space {m['feature_identified_fraction']:.3f}  ({rows[-1]['wall_seconds']:.0f} s)",
                  flush=True)
    document = {"schema_version": 1, "benchmark": "inversion", "rows": rows,
                "statistics_matching": "not implemented: dummy images fitted to a client's G_k, H_k (issue 13, part 1)",
                "total_seconds": time.perf_counter() - started, "environment": rows[-1]["environment"] if rows else None}
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "inversion.json", document, overwrite=True)
    plot(rows, RESULTS / "inversion.png")


def plot(rows: list[dict], path: Path) -> None:
    """Identified fraction of the gram rows' images against the size of the target's class on its client."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        sizes = r["metrics"].get("by_class_size") or (r["metrics"].get("by_method") or {}).get("decoder", {}).get(
            "by_class_size")
        if r["source"] != "gram" or not sizes:
            continue
        keys = sorted(sizes, key=int)
        axis.plot([int(k) for k in keys], [sizes[k]["identified"] / sizes[k]["targets"] for k in keys], "o-",
                  label=f"{r['dataset']} (gram rows → decoder)")
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
