"""Shared fixtures: a private feature cache per test session, small synthetic problems, and the default job run
once under plaintext with its transcript attacked once."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_afl.cli import main


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


@dataclass(frozen=True)
class AttackedRun:
    """A CLI run with its transcript, and `attack --attack all` on that transcript: exit codes, what the attack
    printed, and the files both wrote (read them; never write under ``directory``)."""

    directory: Path
    run_code: int | None = None  # None: not run yet
    attack_code: int | None = None
    printed: str = ""

    @property
    def run(self) -> Path:
        return self.directory / "run.json"

    @property
    def transcript(self) -> Path:
        return self.directory / "transcript"

    @property
    def report(self) -> Path:
        return self.directory / "all.json"

    @property
    def grid(self) -> Path:
        return self.directory / "grid.png"


@pytest.fixture(scope="session")
def default_job_plaintext(tmp_path_factory) -> AttackedRun:
    """The default job (mnist5k, K = 20, α = 0.1, seed 0) under plaintext, run through the CLI with its transcript,
    and that transcript attacked by ``all``. The CLI's test checks the invocations; the attack tests check the
    default job's reports (singletons, counts, class means, gram, difference) in the same files, so the suite
    runs the job, and the slow attacks on it, once instead of once per test."""
    directory = tmp_path_factory.mktemp("default-job-plaintext")
    job = AttackedRun(directory)
    run_code = main(["run", "--protocol", "plaintext", "--transcript", str(job.transcript), "--out", str(job.run),
                     "--quiet"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        attack_code = main(["attack", "--attack", "all", "--transcript", str(job.transcript), "--out",
                            str(job.report), "--grid", str(job.grid)])
    return replace(job, run_code=run_code, attack_code=attack_code, printed=printed.getvalue())


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
