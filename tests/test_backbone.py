import numpy as np
import pytest
import torch

from secure_afl.data.datasets import load_dataset
from secure_afl.errors import BackboneError, ConfigError, WeightsNotFoundError
from secure_afl.features.backbone import load_backbone, map_lite0_key, shipped_lite0_weights
from secure_afl.features.cache import FeatureCache
from secure_afl.features.extract import cached_features, extract_features

from conftest import requires_cuda

CPU = torch.device("cpu")


def test_lite0_key_mapping_covers_every_weight_strictly():
    state = torch.load(shipped_lite0_weights(), map_location="cpu", weights_only=True)
    mapped = {map_lite0_key(k) for k in state} - {None}
    backbone = load_backbone(keep_classifier=True)  # load_state_dict(strict=True) inside
    expected = {k for k in backbone.model.state_dict() if not k.endswith("num_batches_tracked")}
    assert mapped == expected
    assert map_lite0_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert map_lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert map_lite0_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"


def test_shipped_weights_classify_the_imagenet_samples():
    dataset = load_dataset("samples-imagenet")
    source = dataset.pools["all"]
    backbone = load_backbone(keep_classifier=True)
    logits = extract_features(backbone, source, resolution=224, batch_size=10, device=CPU)
    correct = int(np.sum(logits.argmax(axis=1) == source.labels))
    assert len(source) == 20
    assert correct >= 17, f"only {correct}/20 ImageNet samples classified correctly"


def test_random_weights_classify_the_samples_badly():
    source = load_dataset("samples-imagenet").pools["all"]
    backbone = load_backbone(random_weights=True, keep_classifier=True)
    logits = extract_features(backbone, source, resolution=224, batch_size=10, device=CPU)
    assert int(np.sum(logits.argmax(axis=1) == source.labels)) <= 2
    assert backbone.weights_id == "random:0"


def test_feature_cache_hit_on_second_call_returns_identical_features(tmp_path):
    source = load_dataset("samples-cifar10").pools["all"]
    backbone = load_backbone()
    cache = FeatureCache(tmp_path)
    kwargs = dict(dataset="samples-cifar10", pool="all", resolution=32, batch_size=8, device=CPU, cache=cache)
    first, hit_first = cached_features(backbone, source, **kwargs)
    second, hit_second = cached_features(backbone, source, **kwargs)
    assert (hit_first, hit_second) == (False, True)
    assert np.array_equal(first, second) and first.shape == (20, 1280) and first.dtype == np.float32
    other, hit_other = cached_features(backbone, source, **{**kwargs, "resolution": 40})
    assert not hit_other and not np.array_equal(other, first)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_unknown_backbone_is_refused_with_suggestions():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet_18'.*resnet18"):
        load_backbone("resnet_18")


def test_missing_weights_are_refused_unless_random_weights_are_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match="--random-weights"):
        load_backbone("resnet18")
    assert load_backbone("resnet18", random_weights=True).feature_dim == 512
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_backbone("resnet18", weights=tmp_path / "nope.pth")


def test_a_local_weights_file_is_loaded_strictly(tmp_path):
    source = load_backbone("resnet18", random_weights=True, seed=3, keep_classifier=True)
    path = tmp_path / "resnet18.pth"
    torch.save(source.model.state_dict(), path)
    loaded = load_backbone("resnet18", weights=path)
    assert loaded.weights_id.startswith("sha256:")
    x = torch.randn(2, 3, 32, 32)
    source.model.reset_classifier(0)
    assert torch.allclose(loaded.model(x), source.model(x))
    with pytest.raises(BackboneError, match="does not fit backbone"):
        load_backbone("resnet34", weights=path)


def test_precision_only_matters_where_autocast_applies(tmp_path):
    source = load_dataset("samples-mnist").pools["all"]
    backbone = load_backbone()
    kwargs = dict(dataset="samples-mnist", pool="all", resolution=32, batch_size=20, device=CPU,
                  cache=FeatureCache(tmp_path))
    fp32, hit = cached_features(backbone, source, precision="fp32", **kwargs)
    fp16, hit_again = cached_features(backbone, source, precision="fp16", **kwargs)  # the CPU runs fp32 anyway
    assert (hit, hit_again) == (False, True) and np.array_equal(fp32, fp16)
    with pytest.raises(ConfigError, match="unknown precision 'int8'"):
        cached_features(backbone, source, precision="int8", **kwargs)


@requires_cuda
def test_cuda_bf16_features_agree_with_cpu_fp32():
    source = load_dataset("samples-cifar10").pools["all"]
    backbone = load_backbone()
    cpu = extract_features(backbone, source, 64, 20, CPU)
    gpu = extract_features(backbone, source, 64, 20, torch.device("cuda"), precision="bf16")
    cosine = np.sum(cpu * gpu, axis=1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(gpu, axis=1))
    assert gpu.dtype == np.float32 and cosine.min() > 0.98
