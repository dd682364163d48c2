"""Shared fixtures: a private feature cache per test session and small synthetic problems."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def private_feature_cache(tmp_path_factory):
    """Keep tests from reading or filling the user's real feature cache."""
    previous = os.environ.get("SECURE_AFL_CACHE")
    os.environ["SECURE_AFL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("SECURE_AFL_CACHE", None)
    else:
        os.environ["SECURE_AFL_CACHE"] = previous


@pytest.fixture
def synthetic():
    """600 samples, 24 dims, 6 classes from a noisy linear model: small enough for exact checks."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((600, 24))
    labels = np.argmax(x @ rng.standard_normal((24, 6)) + 0.5 * rng.standard_normal((600, 6)), axis=1)
    return x, labels, 6


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
