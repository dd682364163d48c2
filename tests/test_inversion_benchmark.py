"""benchmarks/inversion.py merges its rows into one results file without moving the rows the README indexes, and on
a data set no AFL job runs on (the shipped CIFAR-100 samples: no test split) it still measures the ORACLE
optimisation of the true features, with its threat model, threshold and baselines."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from attacks.inversion.optimise import OptimiseSettings
from secure_afl.data.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("inversion_benchmark", ROOT / "benchmarks" / "inversion.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def _row(dataset: str, source: str, method: str, psnr: float, job: bool = True) -> dict:
    return {"dataset": dataset, "source": source, "method": method, "metrics": {"psnr_mean": psnr},
            **({} if job else {"afl_job": False})}


def test_rows_merge_in_place_and_run_fields_stay_with_the_rows_they_describe(tmp_path):
    path = tmp_path / "inversion.json"
    first = {"settings": {"optimise_steps": 20}, "total_seconds": 5.0}
    benchmark.merge(path, [_row("mnist5k", "singleton", "decoder", 14.0), _row("mnist5k", "gram", "decoder", 14.5)],
                    {}, first)
    document = benchmark.merge(path, [_row("samples-cifar100", "true", "optimise", 11.0, job=False)],
                               {"samples-cifar100": "no test split"}, {"settings": {"optimise_steps": 99}})
    assert [(r["dataset"], r["source"], r["metrics"]["psnr_mean"]) for r in document["rows"]] == [
        ("mnist5k", "singleton", 14.0), ("mnist5k", "gram", 14.5), ("samples-cifar100", "true", 11.0)]
    assert document["settings"] == {"optimise_steps": 20}  # oracle rows alone leave the job rows' run fields
    assert document["not_run"] == {"samples-cifar100": "no test split"}
    rerun = [_row("mnist5k", "gram", "decoder", 15.0), _row("samples-cifar100", "gram", "decoder", 9.0)]
    document = benchmark.merge(path, rerun, {}, {"settings": {"optimise_steps": 60}})
    assert json.loads(path.read_text()) == document
    assert [r["metrics"]["psnr_mean"] for r in document["rows"]] == [14.0, 15.0, 11.0, 9.0]  # replaced where it stood
    assert document["settings"] == {"optimise_steps": 60} and document["not_run"] == {}  # the job ran after all


def test_the_oracle_route_on_a_data_set_without_a_job_reports_threat_model_threshold_and_baselines(tmp_path):
    row = benchmark.oracle_row("samples-cifar100", OptimiseSettings(steps=15), 3, "cpu", tmp_path)
    metrics = row["metrics"]
    assert row["afl_job"] is False and row["oracle"] and (row["source"], row["method"]) == ("true", "optimise")
    assert "ORACLE" in row["threat_model"] and "no transcript" in row["threat_model"]
    assert row["metric"] == "identified" and row["threshold"] == 1.0
    assert "20 training images" in row["identification"]["rule"]  # every sample image is a candidate
    assert metrics["targets"] == metrics["matched"] == row["options"]["images"] == 3
    assert row["options"]["image_size"] == 32
    assert (tmp_path / row["grid"]).stat().st_size > 0
    baselines = metrics["baselines"]
    assert set(baselines) == {"dataset_mean", "random_other", "random_same_class"}
    dataset = load_dataset("samples-cifar100")
    labels = dataset.labels(dataset.train)
    alone = sum(int(np.sum(labels == labels[i]) == 1) for i in range(3))  # no other image of their class
    assert baselines["random_same_class"]["without_guess"] == alone and baselines["random_other"]["without_guess"] == 0
    assert baselines["random_same_class"]["targets"] == 3 - alone and baselines["dataset_mean"]["targets"] == 3
    # the optimised images point their re-encoded features at the true ones far better than any guess does
    assert metrics["feature_cosine_mean"] > max(baselines["dataset_mean"]["feature_cosine_mean"],
                                                baselines["random_other"]["feature_cosine_mean"]) + 0.1
    assert metrics["feature_identified_fraction"] >= 2 / 3
