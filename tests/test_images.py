"""The image metrics every inversion attack reports."""

import numpy as np
import pytest

from attacks.images import identify, match, pixels, psnr, ssim


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 3, 12, 12), dtype=np.uint8)


def test_psnr_is_infinite_for_identical_images_and_matches_its_definition(images):
    assert np.isinf(psnr(images, images)).all()
    noisy = images.astype(np.float64) / 255 + 0.1
    clamped = np.clip(noisy, 0, 1)
    mse = ((clamped - images / 255) ** 2).reshape(6, -1).mean(axis=1)
    np.testing.assert_allclose(psnr(noisy, images), 10 * np.log10(1 / mse), rtol=1e-5)


def test_ssim_is_one_for_identical_images_and_lower_for_noise(images):
    np.testing.assert_allclose(ssim(images, images), 1.0, atol=1e-6)
    rng = np.random.default_rng(1)
    assert (ssim(rng.random(images.shape), images) < 0.5).all()


def test_ssim_accepts_images_smaller_than_its_window():
    small = np.random.default_rng(2).integers(0, 256, size=(2, 1, 8, 8), dtype=np.uint8)
    np.testing.assert_allclose(ssim(small, small), 1.0, atol=1e-6)


def test_match_undoes_a_permutation(images):
    order = np.array([3, 0, 5, 1, 4, 2])
    shuffled = images[order]
    restored = shuffled[match(shuffled, images)]
    assert np.array_equal(restored, images)


def test_identify_ranks_the_true_image(images):
    rng = np.random.default_rng(3)
    close = np.clip(images / 255 + rng.normal(0, 0.01, images.shape), 0, 1)
    found = identify(pixels(close), pixels(images), np.arange(6))
    assert found.identified.all() and (found.nearest == np.arange(6)).all()
    wrong = identify(pixels(close), pixels(images), np.array([1, 2, 3, 4, 5, 0]))
    assert not wrong.identified.any() and wrong.top(6).all()


def test_shapes_are_checked(images):
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(images[:2], images[:3])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ssim(images[0], images[0])
