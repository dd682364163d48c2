"""A site's rows file (``dataset-path``) made from its own labelled images, where the images are.

A real site never ships images: its SuperNode reads only the backbone features of its training images and
their labels (``site.read_site_rows``), so a site turns its images into that file once, on its own machine,
with the job's backbone, weights, resolution and preprocessing. The features come from the same code the
in-process run extracts with (``runner.backbone_features`` over a ``FileSource``, as ``--dataset imagefolder``
reads files), so a site's rows are the rows the in-process run would extract from the same images on the same
device and precision, and they go through the local feature cache. Labels come from the folder layout: one folder per class, named by its class index
``0`` … ``C − 1`` (the labels the shipped data sets use; the job states only the number of classes C). Every
check that can refuse the input runs before the backbone is loaded, and the file is written atomically at the
end, so a refused or interrupted run leaves an existing file as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from secure_afl.data.datasets import IMAGE_SUFFIXES, Dataset, Split
from secure_afl.data.sources import FileSource
from secure_afl.errors import DataError

SITE_DATASET = "site-images"  # the name the progress bar and the feature cache key give a site's images
SHOWN = 5  # offending names a refusal lists


@dataclass(frozen=True)
class SiteRows:
    """What ``write_rows`` wrote: the file, its rows per class, the feature width and where they came from, and
    the classes the job's ``--min-class-count`` will withhold at this site's node (it sends none of their rows)."""

    path: Path
    class_counts: dict[int, int]
    held_out: int  # held-out rows written beside the training rows (``--held-out-images``; APFL evaluates on them)
    feature_dim: int
    device: str
    cache_hit: bool
    withheld: list[int]

    @property
    def rows(self) -> int:
        return sum(self.class_counts.values())


def site_images(directory: str | Path, num_classes: int) -> FileSource:
    """The labelled images under ``directory``: ``directory/<k>/<image>`` for class k in 0 … ``num_classes`` − 1,
    class by class in index order, each class's files sorted by name (as ``--dataset imagefolder`` reads a folder's
    files). Hidden entries are skipped; anything else that is not a class folder holding only image files Pillow
    can open is refused, because an image left out silently would change the site's statistics without a word."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"--images {str(root)!r} is not a directory; expected DIR/<class index>/<image files>")
    accepted = [str(k) for k in range(num_classes)]
    entries = _visible(root)
    stray = [p.name for p in entries if not p.is_dir()]
    if stray:
        raise DataError(f"{str(root)!r} holds files outside any class folder ({_names(stray)}); put each image in "
                        "the folder of its class")
    unknown = sorted(p.name for p in entries if p.name not in accepted)
    if unknown:
        raise DataError(f"{str(root)!r} has folders {_names(unknown)} that name no class of the job: its "
                        f"{num_classes} classes are folders 0 … {num_classes - 1} (the class index, as the job's "
                        "labels are numbered)")
    paths, labels = [], []
    for folder in sorted(entries, key=lambda p: int(p.name)):
        files = _visible(folder)
        others = [p.name for p in files if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise DataError(f"class folder {str(folder)!r} holds entries that are not image files ({_names(others)}); "
                            f"a class folder holds only {', '.join(sorted(IMAGE_SUFFIXES))} files")
        if not files:
            raise DataError(f"class folder {str(folder)!r} holds no images; remove it or add its images")
        paths.extend(sorted(files))
        labels.extend([int(folder.name)] * len(files))
    if not paths:
        raise DataError(f"{str(root)!r} holds no class folders; expected DIR/<class index>/<image files>")
    for path in paths:
        _check_image(path)
    return FileSource(paths, np.asarray(labels, dtype=np.int64))


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in sorted(names)[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _check_image(path: Path) -> None:
    """Refuse a file Pillow cannot identify before the slow extraction starts (a file that identifies but does not
    decode still fails during extraction, before anything is written)."""
    from PIL import Image

    try:
        with Image.open(path):
            pass
    except (OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from exc


def write_rows(job: str | Path, images: str | Path, out: str | Path, *, held_out: str | Path | None = None,
               overwrite: bool = False, progress: bool = False, device: str = "auto", batch_size: int | None = None,
               weights: str | None = None, cache_dir: str | None = None, use_cache: bool = True) -> SiteRows:
    """Write the rows file of the site whose images are under ``images`` for the job file ``job`` (from
    ``secure-afl deploy issue``), with the rows of its held-out images under ``held_out`` (the same layout; a
    personalizing algorithm, APFL, evaluates the site's own model on them at the site). The job's settings that belong to the operator's machine give way to this
    one's: ``device``, the feature cache (``cache_dir``, None: the default one; ``use_cache``), ``batch_size``
    (None: the job's) and ``weights`` (where this site keeps the job's weights file; None: the job's path). The
    job, the output and every image are checked before the backbone is loaded."""
    from secure_afl.deploy.site import FeatureSource, check_deployable, read_job, read_task, write_site_rows
    from secure_afl.device import resolve_device
    from secure_afl.results import check_output_path
    from secure_afl.runner import backbone_features

    config, task = read_job(job), read_task(job)
    check_deployable(config)
    check_output_path(out, overwrite)
    config = replace(config, device=device, cache_dir=cache_dir, use_cache=use_cache,
                     batch_size=config.batch_size if batch_size is None else batch_size,
                     weights=config.weights if weights is None else weights)
    made_by = FeatureSource.of(config)  # this site's backbone and weights file, hashed before anything loads
    task.features.check(made_by, "this site would extract its rows with",
                        "give the job's backbone and the job's weights file (--weights) to make its rows")
    target = resolve_device(config.device)
    source = site_images(images, task.num_classes)
    train = len(source)
    if held_out is not None:  # one extraction for both sets: the rows are split again after it
        held = site_images(held_out, task.num_classes)
        source = FileSource([*source.paths, *held.paths], np.concatenate([source.labels, held.labels]))
    everything = np.arange(len(source))
    dataset = Dataset(SITE_DATASET, task.num_classes, {"train": source}, Split("train", everything),
                      Split("train", everything[:0]))
    features, _, info = backbone_features(config, dataset, target, progress)
    labels = source.labels
    extra = {} if held_out is None else {"held_out_features": features[train:], "held_out_labels": labels[train:]}
    path = write_site_rows(out, made_by, features[:train], labels[:train], **extra)
    classes, counts = np.unique(labels[:train], return_counts=True)
    return SiteRows(path, dict(zip(classes.tolist(), counts.tolist())), len(labels) - train,
                    int(info["feature_dim"]), str(target),
                    info["cache_hits"] == 1, classes[counts < config.min_class_count].tolist())
