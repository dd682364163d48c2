"""Gradient inversion (DLG, iDLG, Inverting Gradients) on the CNN's FedSGD / FedAvg updates, by batch size.

For each data set (mnist5k and the shipped CIFAR-10 samples; the CIFAR-100 samples hold too few
images per class for the runner's test split), model (the DLG paper's LeNet, breaching's ConvNet at
the job's default width), algorithm and batch size B, the data are split iid into clients of B
images each, and ``targets`` of them take part in one round (``--client-fraction``): each client's
update is one batch of B images. The attacks see the transcript only; the evaluator scores PSNR,
SSIM, pixel identifiability among all training images and label accuracy, beside the class-mean
image and a random same-class image, and the time per image. Writes
benchmarks/results/gradient_inversion.json (rewritten after every setting, so a budget cut short still
leaves what was measured), an image grid per attack, data set and model (B = 4, first algorithm) and
a plot of identifiability and PSNR versus batch size.

    python benchmarks/gradient_inversion.py [--scale 1] [--steps 300] [--batches 1 4 16 64] [--models lenet convnet]

``--steps`` is the attacks' iteration count (L-BFGS iterations for DLG / iDLG, Adam steps for Inverting
Gradients); ``--scale`` multiplies the targets per setting and the steps (use it on a GPU: on a
shared 2-core CPU one L-BFGS attack on one image takes minutes, and a few hundred steps understate
what the attacks reach with thousands; the JSON records the seconds per image).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attacks.base import ServerView  # noqa: E402
from attacks.case import Case  # noqa: E402
from attacks.grid import save_grid  # noqa: E402
from attacks.gradient.evaluation import evaluate_inversion, inversion_picture  # noqa: E402
from attacks.gradient.inversion import DLG, IDLG, InvertingGradients  # noqa: E402
from secure_afl.config import RunConfig  # noqa: E402
from secure_afl.device import resolve_device  # noqa: E402
from secure_afl.results import environment, write_results  # noqa: E402
from secure_afl.runner import PlaintextAggregationWarning, SmallTestSplitWarning  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ATTACKS = {"dlg": DLG, "idlg": IDLG, "inverting-gradients": InvertingGradients}
# samples-cifar100 (20 images in 18 classes) leaves no test split, so the runner refuses it
TRAIN_SIZES = {"mnist5k": 4000, "samples-cifar10": 18}
STEPS = 300  # per attack at --scale 1
PICTURED_BATCH = 4


def setting(dataset: str, model: str, algorithm: str, batch: int, targets: int, steps: int, scratch: Path) -> dict:
    clients = TRAIN_SIZES[dataset] // batch
    config = RunConfig(algorithm=algorithm, protocol="plaintext", dataset=dataset, clients=clients, partition="iid",
                       rounds=1, cnn=model, client_fraction=min(1.0, targets / clients),
                       **({"local_batch": max(1, batch // 4)} if algorithm == "fedavg-cnn" else {}))
    ran = Case(config).run(scratch / f"{dataset}-{model}-{algorithm}-{batch}", overwrite=True)
    view = ServerView(ran.transcript)
    rows, pictures = [], {}
    for name, cls in ATTACKS.items():
        attack = cls(steps=steps, clients=targets)
        report, images = evaluate_inversion(attack, attack.run(view), view, ran.truth)
        metrics = report["metrics"]
        rows.append({"dataset": dataset, "model": model, "algorithm": algorithm, "batch": batch, "attack": name,
                     "steps": steps, "client_sizes": sorted({len(ran.truth.client_indices[k]) for k in
                                                              range(len(ran.truth.client_indices))}),
                     **{k: metrics[k] for k in ("targets", "matched", "psnr_mean", "psnr_quantiles", "ssim_mean",
                                                "identified_fraction", "label_accuracy", "recovered_fraction",
                                                "seconds_per_image", "baselines")},
                     "load_average_1min": round(os.getloadavg()[0], 2),
                     "threshold_db": report["threshold"], "threat_model": report["threat_model"]})
        if images:
            pictures[name] = inversion_picture(report, images, ran.truth)
        print(f"{dataset:17s} {model:8s} {algorithm:10s} B={batch:3d} {name:20s} PSNR {metrics['psnr_mean']:.2f} dB "
              f"(class mean {metrics['baselines']['class_mean']['psnr_mean']:.2f}) SSIM {metrics['ssim_mean']:.3f} "
              f"identified {metrics['identified_fraction']:.2f} labels {metrics['label_accuracy']:.2f} "
              f"{metrics['seconds_per_image']:.1f} s/image", flush=True)
    return {"rows": rows, "pictures": pictures}


def plot(rows: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({(r["dataset"], r["model"], r["algorithm"], r["attack"]) for r in rows})
    for key in series:
        points = sorted((r["batch"], r["identified_fraction"], r["psnr_mean"]) for r in rows
                        if (r["dataset"], r["model"], r["algorithm"], r["attack"]) == key)
        label = " / ".join(key)
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axes[1].plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
    for axis, title in zip(axes, ("identified (pixel nearest neighbour)", "PSNR (dB)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size (images per client update)")
        axis.set_title(title, fontsize=9)
    axes[1].legend(fontsize=5)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--datasets", nargs="+", default=list(TRAIN_SIZES))
    parser.add_argument("--models", nargs="+", default=["lenet", "convnet"])
    parser.add_argument("--algorithms", nargs="+", default=["fedsgd-cnn"])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--scratch", default="/tmp/secure-afl-gradient-inversion")
    parser.add_argument("--out", default=str(RESULTS / "gradient_inversion.json"), help="the JSON (its plot beside it)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", PlaintextAggregationWarning)
    warnings.simplefilter("ignore", SmallTestSplitWarning)
    started, load_at_start = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    steps = args.steps * args.scale
    rows, grids = [], []
    for dataset in args.datasets:
        for model in args.models:
            for algorithm in args.algorithms:
                for batch in args.batches:
                    if batch > TRAIN_SIZES[dataset]:
                        continue
                    done = setting(dataset, model, algorithm, batch, args.scale, steps, Path(args.scratch))
                    rows += done["rows"]
                    if batch == PICTURED_BATCH and algorithm == args.algorithms[0]:
                        for name, picture in done["pictures"].items():
                            stem = f"gradient_inversion-{dataset}-{model}-{algorithm}-{name}.png"
                            grids.append(save_grid(RESULTS / stem, picture).name)
                    document = {"benchmark": "gradient_inversion", "scale": args.scale, "steps": steps, "rows": rows,
                                "grids": grids, "total_seconds": time.perf_counter() - started,
                                "options": {"datasets": args.datasets, "models": args.models,
                                            "algorithms": args.algorithms, "batches": args.batches,
                                            "cnn_width": RunConfig.cnn_width},
                                "load_average_at_start": load_at_start,
                                "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                                "environment": environment(resolve_device("auto"), None)}
                    write_results(Path(args.out), document, overwrite=True)
                    plot(rows, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
