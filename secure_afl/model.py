"""A trained model that predicts on new images, and its file format.

A model is the run's predictor (``server.model()``: AFL's ridge weights, every DeepAFL layer, a FedAvg head)
together with what turns images into its inputs: the backbone (name, weights, resolution), the public feature
map (buffer width, activation, seed, row norm) and the seeds they need. Under APFL it is the global model (the
primary stream): each client's personalized refinement stays with that client.

The file is one ``.npz`` (``numpy.load(allow_pickle=False)`` reads it): the predictor's float64 arrays plus a
``__manifest__`` entry holding UTF-8 JSON with the format name, its version, the algorithm and the pipeline.
Nothing in it is pickled, so a model file from elsewhere can be read without running its author's code.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from protocols.files import write_atomically
from secure_afl.algorithms.registry import algorithm
from secure_afl.config import RunConfig
from secure_afl.data.sources import ArraySource, FileSource
from secure_afl.device import resolve_device
from secure_afl.errors import ConfigError, ModelFileError
from secure_afl.results import check_output_path

FORMAT = "secure-afl-model"
VERSION = 2  # 2: DeepAFL keeps each Ω_t as its thin factors (version 1 files, full Ω_t, still load)
MANIFEST = "__manifest__"
# RunConfig fields a model keeps: what makes its inputs (backbone, feature map) and what it was trained as
_PIPELINE = ("algorithm", "dataset", "backbone", "weights", "random_weights", "resolution", "precision",
             "buffer_width", "buffer_activation", "buffer_seed", "buffer_bias", "feature_norm", "max_norm")


@dataclass(frozen=True)
class Model:
    """``predict`` / ``score`` take images (uint8 arrays (N, H, W) or (N, H, W, 3), or image file paths) or
    backbone features (float (N, feature_dim)); ``save`` / ``load`` keep it in a pickle-free file."""

    predictor: object  # LinearModel, DeepAFLModel, HeadModel …: predict(mapped features) → classes
    config: RunConfig  # the pipeline fields above matter; local ones (device, cache, batch size) can be changed
    feature_dim: int  # backbone output width
    num_classes: int

    @property
    def algorithm(self) -> str:
        return self.config.algorithm

    def with_options(self, **local) -> Model:
        """The same model on another device, cache or batch size (``device="cuda"``, ``use_cache=False`` …)."""
        return replace(self, config=replace(self.config, **local))

    def backbone_features(self, images) -> np.ndarray:
        """Backbone features (float32) of images: a uint8 array, or a sequence of image file paths."""
        from secure_afl.features.backbone import load_backbone
        from secure_afl.features.extract import extract_features

        if isinstance(images, np.ndarray) and images.dtype == np.uint8:
            source = ArraySource(images, np.zeros(len(images), dtype=np.int64))
        elif isinstance(images, Sequence) and images and all(isinstance(p, (str, Path)) for p in images):
            source = FileSource([Path(p) for p in images], np.zeros(len(images), dtype=np.int64))
        else:
            raise ConfigError("give images as a uint8 array (N, H, W) or (N, H, W, 3), a list of image file paths, "
                              f"or backbone features (N, {self.feature_dim})")
        config = self.config
        backbone = load_backbone(config.backbone, config.weights, config.random_weights, seed=config.seed)
        return extract_features(backbone, source, config.resolution, config.batch_size,
                                resolve_device(config.device), precision=config.precision)

    def features(self, images_or_features) -> np.ndarray:
        """The predictor's inputs: backbone features (computed from images when given images) through the public
        feature map, exactly as the run mapped its test split; for a model trained end to end on pixels, the pixel
        rows as given."""
        from secure_afl.runner import build_feature_map

        raw = images_or_features
        rows = (isinstance(raw, (np.ndarray, torch.Tensor)) and raw.ndim == 2 and raw.dtype != np.uint8
                and raw.shape[1] == self.feature_dim)
        if algorithm(self.algorithm).inputs == "pixels":  # trained end to end: no backbone, no feature map
            if not rows:
                raise ConfigError(f"{self.algorithm} predicts from normalised 32 px pixel rows, float (N, "
                                  f"{self.feature_dim}): make them with secure_afl.algorithms.convnet.pixel_rows")
            return np.asarray(raw, dtype=np.float32)
        if not rows:
            raw = self.backbone_features(raw)
        raw = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        mapped, _ = build_feature_map(self.config).apply(raw.to(resolve_device(self.config.device)))
        return mapped.cpu().numpy()

    def predict(self, images_or_features) -> np.ndarray:
        """Predicted class indices."""
        return np.asarray(self.predictor.predict(self.features(images_or_features)))

    def score(self, images_or_features, labels) -> float:
        """Accuracy against ``labels`` (scikit-learn's ``score``)."""
        labels = np.asarray(labels)
        predicted = self.predict(images_or_features)
        if len(labels) != len(predicted):
            raise ConfigError(f"{len(predicted)} inputs but {len(labels)} labels")
        return float(np.mean(predicted == labels)) if len(labels) else float("nan")

    def dataset_features(self, name: str, split: str = "test", data_dir: str | None = None):
        """Backbone features and labels of a data set's split, through the feature cache the runs use."""
        from secure_afl.data.datasets import load_dataset
        from secure_afl.runner import backbone_features

        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r}; choose train or test")
        dataset = load_dataset(name, data_dir)
        if dataset.num_classes != self.num_classes:
            raise ConfigError(f"{name} has {dataset.num_classes} classes; this model predicts {self.num_classes}")
        train, test, info = backbone_features(self.config, dataset, resolve_device(self.config.device), False)
        if info["feature_dim"] != self.feature_dim:
            raise ModelFileError(f"the backbone gives {info['feature_dim']} features; the model expects "
                                 f"{self.feature_dim}: its weights differ from the ones it was trained on")
        return (train, dataset.labels(dataset.train)) if split == "train" else (test, dataset.labels(dataset.test))

    def manifest(self) -> dict:
        meta, _ = self.predictor.state()
        pipeline = {name: getattr(self.config, name) for name in _PIPELINE}
        if self.config.random_weights:
            pipeline["seed"] = self.config.seed  # the untrained backbone's weights follow from it
        return {"format": FORMAT, "version": VERSION, "algorithm": self.algorithm, "pipeline": pipeline,
                "feature_dim": self.feature_dim, "num_classes": self.num_classes, "predictor": meta,
                "note": "the global model: each client's personalized model stays with that client"
                if algorithm(self.algorithm).personalize is not None else None}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the model file atomically (a failure leaves no partial file)."""
        check_saveable(self.algorithm)
        check_output_path(path, overwrite)
        _, arrays = self.predictor.state()
        manifest = np.frombuffer(json.dumps(self.manifest()).encode(), dtype=np.uint8)
        return write_atomically(path, lambda out: np.savez(out, **{MANIFEST: manifest}, **arrays), binary=True)

    @classmethod
    def load(cls, path: str | Path) -> Model:
        """Read a model file; a missing, damaged or foreign file is refused with ``ModelFileError``."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except FileNotFoundError:
            raise ModelFileError(f"no model file at {str(path)!r}") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelFileError(f"{str(path)!r} is not a secure-afl model file ({exc})") from None
        try:
            manifest = json.loads(arrays.pop(MANIFEST).tobytes())
        except (KeyError, ValueError):
            raise ModelFileError(f"{str(path)!r} has no secure-afl model manifest") from None
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("version"), int):
            raise ModelFileError(f"{str(path)!r} is not a secure-afl model file")
        if manifest["version"] > VERSION:
            raise ModelFileError(f"{str(path)!r} is model format version {manifest['version']}; this secure-afl "
                                 f"reads up to {VERSION}: upgrade secure-afl")
        try:
            model_type = algorithm(manifest["algorithm"]).model_type
            known = {f.name for f in fields(RunConfig)}
            config = RunConfig(**{k: v for k, v in manifest["pipeline"].items() if k in known})
            predictor = model_type.from_state(manifest["predictor"], arrays)
            return cls(predictor, config, int(manifest["feature_dim"]), int(manifest["num_classes"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(f"{str(path)!r}: damaged model file ({type(exc).__name__}: {exc})") from None


def check_saveable(name: str) -> None:
    """Refuse (before any work) to save the model of an algorithm that declares no model type."""
    if algorithm(name).model_type is None:
        raise ConfigError(f"algorithm {name!r} declares no model type, so its model cannot be saved")


def trained_model(completed) -> Model:
    """The ``Model`` of a finished run (runner.CompletedRun)."""
    return Model(completed.model, completed.plan.config, completed.feature_dim, completed.plan.dataset.num_classes)
