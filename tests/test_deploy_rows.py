"""``secure-afl deploy rows``: a site's rows file made from its own image files equals what the in-process run
extracts for the same images, its SuperNode reads it, and bad input is refused before anything is written.

The images are a shipped data set's (samples-cifar10, 32 × 32 RGB), decoded and written again as PNG files at
their own size, and the job's resolution is that size, so neither path resizes: both give the backbone the same
pixels, and any difference would be the rows tool's.
"""

import hashlib
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.deploy.issue import issue_files
from secure_afl.deploy.rows import site_images, write_rows
from secure_afl.deploy.site import FeatureSource, Site, Task, read_held_out_rows, read_site_rows, read_task, write_job
from secure_afl.errors import DataError
from secure_afl.runner import backbone_features, plan_run

JOB = RunConfig(protocol="plaintext", dataset="samples-cifar10", resolution=32, clients=3, partition="iid",
                device="cpu")
SITE = 0


def quietly(make):
    """The small shipped set warns of its tiny test split, and plaintext that the server sees every statistic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The operator's job files and site 0's images (its partition of the training split) as PNG files,
    ``DIR/<label>/<position in the partition>.png``, with those positions in the order the folders list them."""
    root = tmp_path_factory.mktemp("site")
    plan = quietly(lambda: plan_run(JOB))
    files = issue_files(plan, root / "job")
    dataset, rows = plan.dataset, plan.client_indices[SITE]
    pixels = dataset.pools["all"].read(dataset.train.indices[rows], JOB.resolution).permute(0, 2, 3, 1).numpy()
    for position, (image, label) in enumerate(zip(pixels, plan.train_y[rows])):
        folder = root / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{position:04d}.png")
    listed = [int(p.stem) for label in range(10) for p in sorted((root / "images" / str(label)).glob("*.png"))]
    return plan, Path(files["job"]), root / "images", np.array(listed)


def test_a_sites_rows_equal_the_in_process_features_of_its_images_and_its_node_reads_them(site, tmp_path):
    plan, job, images, order = site
    written = write_rows(job, images, tmp_path / "rows.npz", device="cpu")
    train_raw, _, info = backbone_features(JOB, plan.dataset, torch.device("cpu"), progress=False)
    expected = train_raw[plan.client_indices[SITE]][order]
    task = read_task(job)
    features, labels = read_site_rows(written.path, task.num_classes, task.features)
    assert features.shape == expected.shape == (len(order), info["feature_dim"]) and written.rows == len(order)
    assert np.abs(features - expected).max() <= 1e-6
    np.testing.assert_array_equal(labels, plan.train_y[plan.client_indices[SITE]][order])
    assert written.class_counts == {k: int(n) for k, n in enumerate(np.bincount(labels)) if n} and len(set(labels)) > 1

    def node(**dataset_path):
        return Site.from_node_config({"job": str(job), "partition-id": SITE, "num-partitions": JOB.clients,
                                      **dataset_path}).features()

    own = node(**{"dataset-path": str(written.path)})  # the node reads the site's rows file
    shipped = quietly(node)  # the node takes its partition of the shipped data set (the in-process run's rows)
    assert (own.num_classes, own.train_size, own.backbone_dim) == (shipped.num_classes, shipped.train_size,
                                                                   shipped.backbone_dim)
    np.testing.assert_array_equal(own.y, shipped.y[order])
    assert np.abs(own.x - shipped.x[order]).max() <= 1e-6


def test_the_cli_writes_the_rows_refuses_to_replace_them_unasked_and_replaces_them_with_overwrite(site, tmp_path,
                                                                                                    capsys):
    _, job, images, order = site
    out = tmp_path / "rows.npz"
    command = ["deploy", "rows", "--job", str(job), "--images", str(images), "--out", str(out), "--device", "cpu"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"rows written to {out}: {len(order)} images" in printed and f'dataset-path="{out.resolve()}"' in printed
    source = read_task(job).features
    features, labels = read_site_rows(out, 10, source)
    reference = write_rows(job, images, tmp_path / "api.npz", device="cpu")
    assert reference.cache_hit  # the CLI's extraction filled the feature cache
    np.testing.assert_array_equal(features, read_site_rows(reference.path, 10, source)[0])
    stored = out.read_bytes()
    assert main(command) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == stored
    out.write_bytes(b"an older file")
    assert main([*command, "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().out == "" and out.read_bytes() == stored


def test_the_classes_the_jobs_minimum_count_withholds_at_the_site_are_named(site, tmp_path, capsys):
    plan, job, images, order = site
    strict = write_job(tmp_path / "job.json", replace(JOB, min_class_count=2), read_task(job))
    counts = np.bincount(plan.train_y[plan.client_indices[SITE]])
    rare = [k for k, n in enumerate(counts) if n == 1]
    assert rare and counts.max() >= 2  # the fixture's site holds some classes once and another more often
    assert write_rows(strict, images, tmp_path / "rows.npz", device="cpu").withheld == rare
    assert main(["deploy", "rows", "--job", str(strict), "--images", str(images), "--out", str(tmp_path / "cli.npz"),
                 "--device", "cpu"]) == 0
    assert f"--min-class-count withholds classes {rare} at this site" in capsys.readouterr().out


def test_held_out_images_are_written_beside_the_training_rows_from_one_extraction(site, tmp_path, capsys):
    _, job, images, _ = site
    held_out = copy_images(site, tmp_path / "held")  # four of the site's images: their rows must come back as such
    out = tmp_path / "rows.npz"
    assert main(["deploy", "rows", "--job", str(job), "--images", str(images), "--held-out-images", str(held_out),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "and 4 held-out images" in capsys.readouterr().out
    source = read_task(job).features
    train, labels = read_site_rows(out, 10, source)
    plain = write_rows(job, images, tmp_path / "plain.npz", device="cpu")
    assert plain.held_out == 0 and read_held_out_rows(plain.path, 10, train.shape[1])[0].shape == (0, train.shape[1])
    np.testing.assert_array_equal(train, read_site_rows(plain.path, 10, source)[0])  # the training rows are unchanged
    held_x, held_y = read_held_out_rows(out, 10, train.shape[1])
    listed = [p.name for p in sorted(images.rglob("*.png"))]  # the training rows' order; names are unique
    for row, path in enumerate(sorted(held_out.rglob("*.png"))):  # labelled by the folder copy_images chose
        assert np.abs(held_x[row] - train[listed.index(path.name)]).max() <= 1e-6
        assert held_y[row] == int(path.parent.name)


def copy_images(site, tmp_path) -> Path:
    """A small image folder: four of the site's images, two in class folder 0 and two in 1."""
    for position, path in enumerate(sorted(site[2].rglob("*.png"))[:4]):
        (tmp_path / "images" / str(position // 2)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "images" / str(position // 2) / path.name)
    return tmp_path / "images"


BAD_FOLDERS = {
    "unknown class folder": (lambda d: (d / "10").mkdir(), "folders '10' that name no class of the job"),
    "class named by word": (lambda d: (d / "cat").mkdir(), "folders 'cat' that name no class"),
    "image outside a class": (lambda d: shutil.copy(next((d / "0").glob("*.png")), d / "loose.png"),
                              r"files outside any class folder \('loose.png'\)"),
    "not an image file": (lambda d: (d / "1" / "notes.txt").write_text("x"),
                          r"entries that are not image files \('notes.txt'\)"),
    "nested folder": (lambda d: (d / "1" / "more").mkdir(), r"not image files \('more'\)"),
    "unreadable image": (lambda d: (d / "1" / "broken.png").write_bytes(b"not a png"), "cannot read image .*broken"),
    "empty class folder": (lambda d: (d / "2").mkdir(), "class folder .*2' holds no images"),
    "no class folders": (lambda d: [shutil.rmtree(p) for p in list(d.iterdir()) if p.is_dir()],
                         "holds no class folders"),
    "no folder": (lambda d: shutil.rmtree(d), "is not a directory"),
}


@pytest.mark.parametrize("damage", BAD_FOLDERS)
def test_a_bad_image_folder_is_refused_before_anything_is_written(site, tmp_path, capsys, damage):
    images = copy_images(site, tmp_path)
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0")  # hidden entries are skipped, never refused
    assert len(site_images(images, 10)) == 4
    make, refusal = BAD_FOLDERS[damage]
    make(images)
    with pytest.raises(DataError, match=refusal):
        site_images(images, 10)
    out, cache = tmp_path / "rows.npz", tmp_path / "cache"
    assert main(["deploy", "rows", "--job", str(site[1]), "--images", str(images), "--out", str(out),
                 "--device", "cpu", "--cache-dir", str(cache)]) == 2
    assert capsys.readouterr().err.startswith("secure-afl: error: ")
    assert not out.exists() and not cache.exists()


def test_an_image_that_fails_to_decode_during_extraction_leaves_nothing_behind(site, tmp_path, capsys):
    images = copy_images(site, tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(images / "1" / "cut.png")
    whole = (images / "1" / "cut.png").read_bytes()
    (images / "1" / "cut.png").write_bytes(whole[:len(whole) * 3 // 4])  # Pillow identifies it, cannot decode it
    assert len(site_images(images, 10)) == 5
    out, cache = tmp_path / "rows.npz", tmp_path / "cache"
    out.write_bytes(b"the site's earlier rows")
    assert main(["deploy", "rows", "--job", str(site[1]), "--images", str(images), "--out", str(out), "--overwrite",
                 "--device", "cpu", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "cut.png" in err
    assert out.read_bytes() == b"the site's earlier rows" and not list(cache.glob("*.npz"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rows")] == []


def issued(directory: Path, **options) -> Path:
    config = RunConfig(protocol="plaintext", dataset="digits", clients=3, **options)
    return write_job(directory / "job.json", config,
                     Task(10, 1437, FeatureSource(config.backbone, "sha256:" + "0" * 64, config.resolution)))


def foreign_file(directory: Path) -> Path:
    (directory / "roster.json").write_text('{"format": "secure-afl/roster", "version": 1}')
    return directory / "roster.json"


@pytest.mark.parametrize("job, refusal", [
    (lambda d: write_job(d / "job.json", JOB), "states no task"),
    (foreign_file, "is not a secure-afl job file"),
    (lambda d: issued(d, algorithm="fedavg-cnn"), "fedavg-cnn is not deployed yet"),
    (lambda d: issued(d, backbone="resnet18"), "no local pretrained weights for 'resnet18'"),
    (lambda d: issued(d, weights=str(d / "gone.pth")), "gone.pth' does not exist"),
])
def test_a_job_that_cannot_make_rows_is_refused_before_anything_is_written(site, tmp_path, monkeypatch, capsys, job,
                                                                           refusal):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))  # no weights in any cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    images, out = copy_images(site, tmp_path), tmp_path / "rows.npz"
    command = ["deploy", "rows", "--job", str(job(tmp_path)), "--images", str(images), "--out", str(out),
               "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    assert main(command) == 2
    assert refusal in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_rows_from_weights_that_are_not_the_jobs_are_refused_before_the_backbone_loads(site, tmp_path, capsys):
    """Another weights file gives rows of the same width and a silently wrong model: the site's file is hashed and
    compared with the job's before anything is extracted or written."""
    _, job, images, _ = site
    weights = tmp_path / "other.pth"
    weights.write_bytes(b"another model's weights")
    out = tmp_path / "rows.npz"
    assert main(["deploy", "rows", "--job", str(job), "--images", str(images), "--out", str(out), "--device", "cpu",
                 "--weights", str(weights), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"weights 'sha256:{digest}' where the job has '{read_task(job).features.weights}'" in err
    assert not out.exists() and not (tmp_path / "cache").exists()
