"""Gradient inversion (DLG, iDLG, Inverting Gradients) on the CNN's FedSGD / FedAvg updates, by batch size.

For each data set (mnist5k and the shipped CIFAR-10 samples), model (the DLG paper's LeNet,
breaching's ConvNet at the job's default width), algorithm and batch size B, the data are split iid
into clients of B images each, and enough of them to give ``--images`` target images (at least one
client) take part in one round (``--client-fraction``): each client's update is one batch of B
images. The attacks see the transcript only; the evaluator scores PSNR, SSIM, pixel identifiability
among all training images, label accuracy (per matched image, and of the batch's labels as a
multiset) beside the class-mean image and a random same-class image, and the time per image.

Rows are merged into benchmarks/results/gradient_inversion.json: a row replaces the one of the same
(dataset, model, algorithm, batch, attack), so settings can be run (and rerun) separately, and two
processes may run at once (the read-merge-write is under a file lock). Every row records what ran
(steps, clients, torch threads) and the 1-minute load average at its end: timings on a shared CPU
are loaded. Each run rewrites the file after every setting, so a budget cut short still leaves what
was measured, and redraws an image grid per attack, data set and model (B = 4, first algorithm) and
the plot of identifiability and PSNR versus batch size (one line per model × attack, the class-mean
image beside them).

A data set the runner refuses is recorded with the runner's reason under ``not_run`` in the JSON: the
shipped CIFAR-100 samples (20 images in 18 classes) and ImageNet samples (20 images in 19 classes)
leave no test split (no class has 3 images), and the runner needs one.

    python benchmarks/gradient_inversion.py [--steps 300] [--images 8] [--batches 1 4 16 64] [--models lenet convnet]

``--steps`` is the attacks' iteration count (L-BFGS iterations for DLG / iDLG, at most twice as many
evaluations; Adam steps for Inverting Gradients); ``--scale`` multiplies the target images and the
steps (for a GPU). ``--threads`` (default 1) is torch's thread count: on a shared 2-core CPU two
threads made one LeNet gradient evaluation about 100 times slower than one thread (0.6 s against
0.007 s at a load average of 15): the first runs, on two threads, took 192 s per image for DLG at B = 16.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import tempfile
import warnings
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from attacks.base import ServerView  # noqa: E402
from attacks.case import Case  # noqa: E402
from attacks.grid import save_grid  # noqa: E402
from attacks.gradient.evaluation import evaluate_inversion, inversion_picture  # noqa: E402
from attacks.gradient.inversion import DLG, IDLG, InvertingGradients  # noqa: E402
from secure_afl.config import RunConfig  # noqa: E402
from secure_afl.data.datasets import load_dataset  # noqa: E402
from secure_afl.device import resolve_device  # noqa: E402
from secure_afl.errors import ConfigError  # noqa: E402
from secure_afl.results import environment, merge_rows, write_results  # noqa: E402
from secure_afl.runner import PlaintextAggregationWarning, SmallTestSplitWarning  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ATTACKS = {"dlg": DLG, "idlg": IDLG, "inverting-gradients": InvertingGradients}
DATASETS = ("mnist5k", "samples-cifar10", "samples-cifar100", "samples-imagenet")
STEPS = 300  # per attack at --scale 1
IMAGES = 8  # target images per setting at --scale 1 (clients of B images: at least one)
PICTURED_BATCH = 4
KEY = ("dataset", "model", "algorithm", "batch", "attack")
METRICS = ("targets", "matched", "psnr_mean", "psnr_quantiles", "ssim_mean", "identified_fraction", "label_accuracy",
           "label_count_accuracy", "recovered_fraction", "seconds_per_image", "baselines")


def setting(dataset: str, model: str, algorithm: str, batch: int, images: int, steps: int, scratch: Path) -> dict:
    clients = train_size(dataset) // batch
    attacked = min(clients, math.ceil(images / batch))
    config = RunConfig(algorithm=algorithm, protocol="plaintext", dataset=dataset, clients=clients, partition="iid",
                       rounds=1, cnn=model, client_fraction=min(1.0, attacked / clients),
                       **({"local_batch": max(1, batch // 4)} if algorithm == "fedavg-cnn" else {}))
    ran = Case(config).run(scratch / f"{dataset}-{model}-{algorithm}-{batch}", overwrite=True)
    view = ServerView(ran.transcript)
    rows, pictures = [], {}
    for name, cls in ATTACKS.items():
        attack = cls(steps=steps, clients=attacked)
        report, found = evaluate_inversion(attack, attack.run(view), view, ran.truth)
        metrics = report["metrics"]
        rows.append({"dataset": dataset, "model": model, "algorithm": algorithm, "batch": batch, "attack": name,
                     "steps": steps, "clients_attacked": attacked, "cnn_width": RunConfig.cnn_width,
                     "client_sizes": sorted({len(ran.truth.client_indices[k]) for k in
                                             range(len(ran.truth.client_indices))}),
                     **{k: metrics[k] for k in METRICS},
                     "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
                     "threshold_db": report["threshold"], "threat_model": report["threat_model"]})
        if found:
            pictures[name] = inversion_picture(report, found, ran.truth)
        print(f"{dataset:17s} {model:8s} {algorithm:10s} B={batch:3d} {name:20s} PSNR {metrics['psnr_mean']:.2f} dB "
              f"(class mean {metrics['baselines']['class_mean']['psnr_mean']:.2f}) SSIM {metrics['ssim_mean']:.3f} "
              f"identified {metrics['identified_fraction']:.2f} labels {metrics['label_accuracy']:.2f} "
              f"(as counts {metrics['label_count_accuracy']:.2f}) {metrics['seconds_per_image']:.2f} s/image "
              f"load {rows[-1]['load_average_1min']}", flush=True)
    return {"rows": rows, "pictures": pictures}


@cache
def train_size(dataset: str) -> int:
    return len(load_dataset(dataset).train.indices)


@contextmanager
def locked(path: Path):
    """An exclusive lock for the read-merge-write of ``path`` (another run of this benchmark may be writing it)."""
    with open(Path(tempfile.gettempdir()) / f"{path.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)


def merge(path: Path, measured: list[dict], grids: list[str], refused: dict[str, str]) -> list[dict]:
    """Merge ``measured`` into the results file at ``path`` (a row replaces the one with the same KEY), and the
    data sets the runner ``refused`` (data set → its reason); all its rows, sorted by KEY. Call it under
    ``locked(path)``."""
    kept = json.loads(path.read_text()) if path.exists() else {"rows": [], "grids": []}
    rows = sorted(merge_rows(kept["rows"], measured, row_key), key=row_key)
    document = {"benchmark": "gradient_inversion", "key": list(KEY),
                "rows_note": "one row per (dataset, model, algorithm, batch, attack), each from the latest run "
                             "of that setting; every row records its steps, clients attacked, torch threads "
                             "and 1-minute load average (timings are loaded)",
                "not_run": {name: reason for name, reason in {**kept.get("not_run", {}), **refused}.items()
                            if name not in {r["dataset"] for r in rows}},
                "rows": rows, "grids": sorted(set(kept["grids"]) | set(grids)),
                "environment": environment(resolve_device("auto"), None)}
    write_results(path, document, overwrite=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Per data set: identified fraction and PSNR against B, one line per model × attack (colour: attack, line
    style: model), the class-mean image in grey."""
    datasets = sorted({r["dataset"] for r in rows})
    figure, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.8 * len(datasets)), squeeze=False)
    colours = {name: f"C{i}" for i, name in enumerate(ATTACKS)}
    styles = {"lenet": "-", "convnet": "--", "acnn": ":"}
    for axes_row, dataset in zip(axes, datasets):
        ours = [r for r in rows if r["dataset"] == dataset]
        for model, algorithm, attack in sorted({(r["model"], r["algorithm"], r["attack"]) for r in ours}):
            points = sorted((r["batch"], r["identified_fraction"], r["psnr_mean"]) for r in ours
                            if (r["model"], r["algorithm"], r["attack"]) == (model, algorithm, attack))
            style = {"color": colours.get(attack), "linestyle": styles.get(model, "-"), "marker": "o"}
            label = f"{model} / {attack}" + ("" if algorithm == "fedsgd-cnn" else f" / {algorithm}")
            axes_row[0].plot([p[0] for p in points], [p[1] for p in points], label=label, **style)
            axes_row[1].plot([p[0] for p in points], [p[2] for p in points], label=label, **style)
        baseline = {}
        for r in ours:  # the class-mean image depends on the targets only, which every attack of a setting shares
            baseline.setdefault(r["batch"], r["baselines"]["class_mean"])
        batches = sorted(baseline)
        for axis, key in zip(axes_row, ("identified_fraction", "psnr_mean")):
            axis.plot(batches, [baseline[b][key] for b in batches], color="grey", linestyle=":", marker="x",
                      label="class-mean image")
            axis.set_xscale("log", base=2)
            axis.set_xticks(batches, [str(b) for b in batches])
            axis.set_xlabel("batch size B (images per client update)")
        axes_row[0].set_title(f"{dataset}: identified (pixel nearest neighbour among the training images)", fontsize=9)
        axes_row[1].set_title(f"{dataset}: PSNR (dB)", fontsize=9)
        axes_row[0].set_ylim(-0.05, 1.05)
        axes_row[1].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="multiplies the target images and the steps")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=["lenet", "convnet"])
    parser.add_argument("--algorithms", nargs="+", default=["fedsgd-cnn"])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--images", type=int, default=IMAGES, help="target images per setting (at least one client)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than one crawls on a loaded CPU)")
    parser.add_argument("--scratch", default="/tmp/secure-afl-gradient-inversion")
    parser.add_argument("--out", default=str(RESULTS / "gradient_inversion.json"),
                        help="the JSON rows are merged into (its plot beside it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", PlaintextAggregationWarning)
    warnings.simplefilter("ignore", SmallTestSplitWarning)
    out, steps, images = Path(args.out), args.steps * args.scale, args.images * args.scale
    for dataset in args.datasets:
        try:
            run_dataset(dataset, args, images, steps, out)
        except ConfigError as error:  # the runner refuses the data set (e.g. no test split): say so in the JSON
            print(f"{dataset}: not run: {error}", flush=True)
            with locked(out):
                plot(merge(out, [], [], {dataset: str(error)}), out.with_suffix(".png"))


def run_dataset(dataset: str, args: argparse.Namespace, images: int, steps: int, out: Path) -> None:
    for model in args.models:
        for algorithm in args.algorithms:
            for batch in args.batches:
                if batch > train_size(dataset):
                    continue
                done = setting(dataset, model, algorithm, batch, images, steps, Path(args.scratch))
                grids = []
                if batch == PICTURED_BATCH and algorithm == args.algorithms[0]:
                    for name, picture in done["pictures"].items():
                        stem = f"gradient_inversion-{dataset}-{model}-{algorithm}-{name}.png"
                        grids.append(save_grid(out.parent / stem, picture).name)
                with locked(out):
                    plot(merge(out, done["rows"], grids, {}), out.with_suffix(".png"))


if __name__ == "__main__":
    main()
