"""Feature-extraction throughput of the pipeline against a bare timm forward of the same model.

The pipeline (read uint8 batches on a thread, copy, resize, normalise, bf16 autocast on CUDA,
collect float32) should reach ≥ 80% of the throughput of the model alone on ready-made input
tensors of the same batch size and resolution. Writes benchmarks/results/extraction_<device>.json.

    python benchmarks/extraction_throughput.py [--device cuda] [--images 1024] [--scale 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from secure_afl.data.datasets import load_dataset
from secure_afl.data.sources import ArraySource
from secure_afl.device import resolve_device
from secure_afl.features.backbone import load_backbone
from secure_afl.features.extract import extract_features
from secure_afl.results import environment, write_results

RESULTS = Path(__file__).parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def bare_forward(model, images: int, batch: int, resolution: int, device: torch.device) -> float:
    """Images per second of the model alone on an input tensor already on the device."""
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    on_cuda = device.type == "cuda"
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_cuda):
        model(x)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        done = 0
        while done < images:
            model(x).float()
            done += batch
        synchronize(device)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--scale", type=int, default=1, help="multiplies --images (mnist5k images are repeated)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=96)
    args = parser.parse_args()
    device = resolve_device(args.device)
    images = args.images * args.scale
    pool = load_dataset("mnist5k").pools["all"]
    repeat = np.arange(images) % len(pool)
    source = ArraySource(pool.images[repeat], pool.labels[repeat])
    backbone = load_backbone()
    backbone.model.to(device)

    extract_features(backbone, ArraySource(pool.images[: args.batch_size], pool.labels[: args.batch_size]),
                     args.resolution, args.batch_size, device)  # warm-up (CUDA context, kernels)
    synchronize(device)
    start = time.perf_counter()
    extract_features(backbone, source, args.resolution, args.batch_size, device)
    pipeline = images / (time.perf_counter() - start)
    bare = bare_forward(backbone.model, images, args.batch_size, args.resolution, device)
    row = {
        "images": images,
        "batch_size": args.batch_size,
        "resolution": args.resolution,
        "pipeline_img_per_s": pipeline,
        "bare_forward_img_per_s": bare,
        "ratio": pipeline / bare,
    }
    print(f"{environment(device, 0)['device_name']}: pipeline {pipeline:.1f} img/s, bare forward {bare:.1f} img/s, "
          f"ratio {row['ratio']:.2f} (target ≥ 0.80)")
    RESULTS.mkdir(exist_ok=True)
    write_results(
        RESULTS / f"extraction_{device.type}.json",
        {"schema_version": 1, "benchmark": "extraction_throughput", "row": row, "environment": environment(device, 0)},
        overwrite=True,
    )


if __name__ == "__main__":
    main()
