import numpy as np
import pytest
from PIL import Image

from secure_afl.data.datasets import load_dataset
from secure_afl.config import RunConfig
from secure_afl.errors import ConfigError, DataError
from secure_afl.runner import plan_run


@pytest.mark.parametrize(
    "name, total, classes",
    [("digits", 1797, 10), ("mnist5k", 5000, 10), ("samples-cifar10", 20, 10), ("samples-cifar100", 20, 100),
     ("samples-imagenet", 20, 1000)],
)
def test_builtin_datasets_load_offline(name, total, classes):
    dataset = load_dataset(name)
    train, test = dataset.labels(dataset.train), dataset.labels(dataset.test)
    assert len(train) + len(test) == total
    assert len(np.intersect1d(dataset.train.indices, dataset.test.indices)) == 0
    assert dataset.num_classes == classes and train.max() < classes
    batch = dataset.pools[dataset.train.pool].read(dataset.train.indices[:3], 32)
    assert batch.dtype.is_floating_point is False and batch.shape[:2] == (3, 3)


def test_mnist5k_split_is_the_documented_4000_1000():
    dataset = load_dataset("mnist5k")
    assert len(dataset.train.indices) == 4000 and len(dataset.test.indices) == 1000
    assert np.bincount(dataset.labels(dataset.test)).tolist() == [100] * 10


def test_unknown_dataset_and_missing_directories_are_refused(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist6k'.*mnist5k"):
        load_dataset("mnist6k")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "absent")
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", tmp_path)


def _write_images(folder, classes, per_class):
    for cls in classes:
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            value = 40 * classes.index(cls) + i
            Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(folder / cls / f"{i}.png")


def test_image_folder_with_train_and_test(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog"], 4)
    _write_images(tmp_path / "test", ["cat", "dog"], 2)
    dataset = load_dataset("imagefolder", tmp_path)
    assert dataset.num_classes == 2
    assert dataset.labels(dataset.train).tolist() == [0] * 4 + [1] * 4
    assert len(dataset.test.indices) == 4
    batch = dataset.pools["train"].read([0, 5], 16)
    assert tuple(batch.shape) == (2, 3, 16, 16) and int(batch[1].float().mean()) == 41


def test_image_folder_without_test_split_is_held_out(tmp_path):
    _write_images(tmp_path, ["a", "b", "c"], 5)
    dataset = load_dataset("imagefolder", tmp_path)
    assert len(dataset.train.indices) == 12 and len(dataset.test.indices) == 3


def test_empty_image_folder_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_dataset("imagefolder", tmp_path)


def test_a_data_set_without_a_test_split_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="samples-imagenet: .* leave no test split"):
        plan_run(RunConfig(dataset="samples-imagenet", clients=2, protocol="plaintext"))
