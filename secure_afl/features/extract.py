"""Backbone feature extraction: batches read ahead on a thread, resized and run on the device.

On CUDA the backbone runs under bf16 (default) or fp16 autocast, or in fp32 when asked; features
always come back float32 and the CPU always computes in fp32. Pixel batches are
pinned and copied asynchronously while the next batch is read, so the GPU is not left waiting on
the loader. Results are cached per pool (see ``cache.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from secure_afl.data.sources import ImageSource
from secure_afl.errors import ConfigError, FeatureError
from secure_afl.features.backbone import Backbone
from secure_afl.features.cache import FeatureCache, cache_key

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision the backbone really runs in: autocast only applies on CUDA."""
    check_precision(precision)
    return precision if device.type == "cuda" else "fp32"


def _batches(source: ImageSource, resolution: int, batch_size: int, pin: bool) -> Iterator[torch.Tensor]:
    """Yield uint8 batches, reading the next one while the caller works on the current one."""
    starts = range(0, len(source), batch_size)

    def read(start: int) -> torch.Tensor:
        batch = source.read(np.arange(start, min(start + batch_size, len(source))), resolution).contiguous()
        return batch.pin_memory() if pin else batch

    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, starts[0])
        for next_start in [*starts[1:], None]:
            batch = pending.result()
            pending = pool.submit(read, next_start) if next_start is not None else None
            yield batch


def prepare(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) → input at ``resolution`` normalised by (B-broadcastable) ``mean``/``std``,
    on their device."""
    x = batch.to(mean.device, non_blocking=True).float().div_(255.0)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return (x - mean) / std


@torch.inference_mode()
def extract_features(
    backbone: Backbone,
    source: ImageSource,
    resolution: int,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    description: str = "features",
    precision: str = "bf16",
) -> np.ndarray:
    """Features (N, feature_dim) float32 of every image in ``source``, in order."""
    if resolution < 8:
        raise ConfigError(f"resolution must be at least 8 pixels, got {resolution}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    from tqdm.auto import tqdm

    autocast_dtype = PRECISIONS[effective_precision(precision, device)]
    model = backbone.model.to(device)
    on_cuda = device.type == "cuda"
    mean = torch.tensor(backbone.preprocessing.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std, device=device).view(1, 3, 1, 1)
    chunks = []
    with tqdm(total=len(source), desc=description, unit="img", disable=not progress, leave=False) as bar:
        for batch in _batches(source, resolution, batch_size, pin=on_cuda):
            x = prepare(batch, mean, std, resolution)
            with torch.autocast(device_type="cuda", dtype=autocast_dtype, enabled=autocast_dtype is not None):
                chunks.append(model(x).float())
            bar.update(len(batch))
    features = torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, backbone.feature_dim), np.float32)
    if not np.isfinite(features).all():
        raise FeatureError(f"the backbone produced NaN/Inf features for {description}; check the weights and inputs")
    return features


def cached_features(
    backbone: Backbone,
    source: ImageSource,
    *,
    dataset: str,
    pool: str,
    resolution: int,
    batch_size: int,
    device: torch.device,
    cache: FeatureCache | None,
    progress: bool = False,
    precision: str = "bf16",
) -> tuple[np.ndarray, bool]:
    """Features of a pool from the cache when present (returns ``hit=True``), else extracted and stored."""
    key = cache_key(
        {
            "dataset": dataset,
            "pool": pool,
            "source": source.fingerprint(),
            "backbone": backbone.name,
            "weights": backbone.weights_id,
            "resolution": resolution,
            "preprocessing": asdict(backbone.preprocessing),
            "precision": effective_precision(precision, device),
        }
    )
    if cache is not None and (found := cache.load(key, source.labels)) is not None:
        return found, True
    features = extract_features(
        backbone, source, resolution, batch_size, device, progress, f"{dataset}/{pool}", precision
    )
    if cache is not None:
        cache.store(key, features, source.labels)
    return features, False
