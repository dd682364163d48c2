"""One registration point per algorithm: a new algorithm is its own module plus one ``register`` call, and the
runner, the option scopes and the CLI take it without naming it anywhere else."""

import json

import numpy as np
import pytest
import torch

from secure_afl.algorithms.afl import statistics_bound
from secure_afl.algorithms.base import Algorithm, AlgorithmClient, AlgorithmServer, LinearModel, RoundSpec
from secure_afl.algorithms.registry import ALGORITHMS, algorithm, register
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.errors import ConfigError
from secure_afl.runner import run

CENTROIDS = "test/centroids"


class CentroidClient(AlgorithmClient):
    """Sends its per-class feature sums and counts: one round, a sum."""

    def __init__(self, x, y, classes):
        x = torch.as_tensor(x).to(torch.float64).cpu().numpy()
        self.vector = np.concatenate([np.stack([x[y == c].sum(0) for c in range(classes)]).ravel(),
                                      np.bincount(y, minlength=classes).astype(np.float64)])

    def contribute(self, spec):
        return self.vector


class CentroidServer(AlgorithmServer):
    """Nearest class mean by inner product: scores x · μ_c."""

    def __init__(self, dim, classes, bound):
        self.dim, self.classes, self.bound, self.means = dim, classes, bound, None

    def next_round(self):
        if self.means is not None:
            return None
        return RoundSpec(CENTROIDS, self.classes * (self.dim + 1), self.bound)

    def receive(self, spec, total):
        sums, counts = total[:-self.classes].reshape(self.classes, self.dim), total[-self.classes:]
        self.means = sums / np.maximum(counts, 1.0)[:, None]

    def model(self):
        return LinearModel(self.means.T.copy())


def centroids(x, y, classes) -> LinearModel:
    server = CentroidServer(x.shape[1], classes, np.inf)
    server.receive(None, CentroidClient(x, y, classes).vector)
    return server.model()


def build(job, data, max_samples, max_norm):
    server = CentroidServer(data.train_x.shape[1], data.num_classes, statistics_bound(max_samples, max_norm))
    clients = {k: CentroidClient(data.train_x[idx], data.train_y[idx], data.num_classes)
               for k, idx in enumerate(data.client_indices) if len(idx)}
    return server, clients


DUMMY = Algorithm("centroids", configure=lambda config: None, build=build, options=("min_class_count",),
                  reference=lambda job, x, y, classes, max_norm: centroids(x, y, classes),
                  report=lambda job, server, clients, features: {"centroid_norms": np.linalg.norm(
                      server.means, axis=1).tolist()})


@pytest.fixture
def dummy(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, DUMMY.name, DUMMY)  # removed again after the test
    return DUMMY


def test_built_in_algorithms_are_registered_once_under_their_names():
    assert list(ALGORITHMS) == ["afl", "apfl", "deepafl", "fedavg", "fedprox", "fedsgd-cnn", "fedavg-cnn",
                               "fedacnnl", "pfedacnnl"]
    assert all(algorithm(name).name == name for name in ALGORITHMS)
    with pytest.raises(ConfigError, match="already registered"):
        register(ALGORITHMS["afl"])
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'; choose one of afl, apfl"):
        algorithm("nope")


def test_a_registered_algorithm_runs_through_the_runner_and_the_cli(dummy, tmp_path, capsys):
    config = RunConfig(algorithm="centroids", dataset="digits", resolution=32, clients=6, protocol="mask")
    results = run(config)
    metrics = results["metrics"]
    assert results["config"]["algorithm"] == "centroids"
    assert len(results["bytes"]["per_round"]) == 1 and results["bytes"]["per_round"][0]["round"] == CENTROIDS
    assert metrics["max_rel_diff_to_centralized"] <= 1e-9  # the masked sum is the pooled class means
    assert metrics["accuracy"] == metrics["centralized_accuracy"] and 0.5 < metrics["accuracy"] <= 1.0
    assert len(metrics["centroid_norms"]) == 10 and "history" not in metrics
    out = tmp_path / "run.json"
    assert main(["run", "--algorithm", "centroids", "--dataset", "digits", "--resolution", "32", "--clients", "6",
                 "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["accuracy"] == metrics["accuracy"]


def test_option_scopes_follow_the_registry(dummy, capsys):
    RunConfig(algorithm="centroids", min_class_count=2).validate()  # declared by the dummy: accepted
    with pytest.raises(ConfigError, match="depth only apply to --algorithm deepafl"):
        RunConfig(algorithm="centroids", depth=3).validate()
    with pytest.raises(ConfigError, match="min_class_count only apply to --algorithm afl / apfl / deepafl / centroids"):
        RunConfig(algorithm="fedavg", min_class_count=2).validate()
    assert main(["run", "--algorithm", "centroids", "--rounds", "3", "--quiet", "--out", "x.json"]) == 2
    assert "rounds only apply to --algorithm fedavg / fedprox" in capsys.readouterr().err
