"""Saved models and the Python API: a model file predicts exactly what the run measured, from features or
images, after a save/load round trip; damaged or foreign files and impossible outputs are refused."""

import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

import secure_afl
from secure_afl.cli import main
from secure_afl.data.datasets import load_dataset
from secure_afl.errors import ConfigError, ModelFileError
from secure_afl.model import VERSION
from secure_afl.results import format_summary

QUICK = ["run", "--dataset", "digits", "--resolution", "32", "--clients", "10", "--quiet"]
ALGORITHMS = {
    "afl": [],
    "apfl": ["--refine-width", "256"],
    "deepafl": ["--depth", "2", "--residual-width", "64"],
    "fedavg": ["--rounds", "3"],
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_predict_on_the_test_split_equals_the_runs_own_accuracy(algorithm, tmp_path, capsys):
    results, model, predictions = tmp_path / "run.json", tmp_path / "model.npz", tmp_path / "predictions.json"
    assert main([*QUICK, "--algorithm", algorithm, *ALGORITHMS[algorithm], "--out", str(results),
                 "--save-model", str(model)]) == 0
    assert main(["predict", "--model", str(model), "--dataset", "digits", "--out", str(predictions)]) == 0
    run, predicted = json.loads(results.read_text()), json.loads(predictions.read_text())
    assert predicted["metrics"]["accuracy"] == run["metrics"]["accuracy"]  # exactly, not approximately
    assert predicted["n"] == run["features"]["test"] == len(predicted["predictions"])
    assert predicted["model"]["algorithm"] == algorithm and predicted["model"]["version"] == VERSION
    stored = np.load(model, allow_pickle=False)  # no pickle anywhere in the file
    manifest = json.loads(stored["__manifest__"].tobytes())
    assert manifest["pipeline"]["backbone"] == run["config"]["backbone"]
    assert manifest["pipeline"]["resolution"] == 32 and manifest["feature_dim"] == run["features"]["feature_dim"]
    assert (manifest["note"] is not None) == (algorithm == "apfl")  # APFL saves the global model and says so


def test_the_python_api_round_trips_a_model_and_predicts_from_images(tmp_path):
    result = secure_afl.run({"dataset": "digits", "resolution": 32, "clients": 10}, algorithm="deepafl", depth=1,
                            residual_width=32, transcript=tmp_path / "transcript")
    assert result.transcript == tmp_path / "transcript" and (result.transcript / "manifest.json").is_file()
    assert result.results["config"]["algorithm"] == "deepafl"
    loaded = secure_afl.Model.load(result.model.save(tmp_path / "m.npz"))
    features, labels = loaded.dataset_features("digits", "test")
    assert loaded.score(features, labels) == result.results["metrics"]["accuracy"]
    assert np.array_equal(loaded.predict(features), result.model.predict(features))
    dataset = load_dataset("digits")
    images = dataset.pools["all"].images[dataset.test.indices[:40]]  # uint8 (N, 8, 8), through the backbone
    assert np.array_equal(loaded.predict(images), loaded.predict(features[:40]))
    with pytest.raises(ConfigError, match="unknown option.*buffer_wdth"):
        secure_afl.run(buffer_wdth=3)
    with pytest.raises(ConfigError, match="list of image file paths"):
        loaded.predict(np.zeros((2, 7)))


def test_the_readme_example_reproduces_the_runs_accuracy_from_the_saved_model(tmp_path):
    example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "python_api.py"), run_name="example")
    accuracy = example["main"](tmp_path)  # asserts the loaded model's score equals the run's own accuracy
    assert (tmp_path / "digits-afl.npz").is_file() and 0.5 < accuracy <= 1.0


@pytest.mark.parametrize("content, message", [
    (b"", "not a secure-afl model file"),
    (b"PK\x03\x04 truncated", "not a secure-afl model file"),
    (b'{"metrics": {}}', "not a secure-afl model file"),
])
def test_damaged_or_foreign_model_files_are_refused_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    assert main(["predict", "--model", str(path), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("secure-afl: error: ") and message in err[0]


def test_newer_format_versions_and_unknown_manifests_are_refused(tmp_path):
    for manifest, message in [({"format": "secure-afl-model", "version": 99}, "upgrade secure-afl"),
                              ({"format": "other", "version": 1}, "not a secure-afl model file")]:
        path = tmp_path / "m.npz"
        np.savez(path, __manifest__=np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8))
        with pytest.raises(ModelFileError, match=message):
            secure_afl.Model.load(path)
    np.savez(tmp_path / "none.npz", weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="no secure-afl model manifest"):
        secure_afl.Model.load(tmp_path / "none.npz")


def test_an_unwritable_model_path_and_ambiguous_inputs_are_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([*QUICK, "--out", str(tmp_path / "r.json"),
                 "--save-model", str(blocker / "m.npz")]) == 2
    assert "cannot write output" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert main(["predict", "--model", "m.npz", "--dataset", "digits", "a.png"]) == 2
    assert "either --dataset NAME or IMAGE files" in capsys.readouterr().err
    assert main(["predict", "--model", "m.npz"]) == 2
    assert "either --dataset NAME or IMAGE files" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm, extra, expected", [
    ("afl", ["--protocol", "plaintext"], {"per_client_accuracy", "bytes_per_stage"}),
    ("deepafl", ["--depth", "2", "--residual-width", "32"], {"per_client_accuracy", "layer_accuracy",
                                                             "bytes_per_stage"}),
    ("fedavg", ["--rounds", "2"], {"per_client_accuracy", "round_accuracy", "bytes_per_stage"}),
])
def test_plot_draws_the_pictures_of_each_kind_of_run(algorithm, extra, expected, tmp_path, capsys):
    results = tmp_path / "run.json"
    assert main([*QUICK, "--algorithm", algorithm, *extra, "--out", str(results)]) == 0
    assert main(["plot", str(results), "--quiet"]) == 0
    drawn = sorted((tmp_path / "run-plots").iterdir())
    assert {p.stem for p in drawn} == expected
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in drawn)
    assert main(["plot", str(results), "--quiet"]) == 2  # existing pictures are kept unless --overwrite
    assert "already exists" in capsys.readouterr().err


def test_plot_refuses_what_is_not_a_results_file_in_one_line(tmp_path, capsys):
    other = tmp_path / "predictions.json"
    other.write_text(json.dumps({"schema_version": 1, "predictions": [1, 2]}))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    for path, message in [(other, "is not a secure-afl results file (it lacks config, metrics, bytes)"),
                          (broken, "is not a JSON file"), (tmp_path / "missing.json", "no results file")]:
        assert main(["plot", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not list(tmp_path.glob("*-plots"))


def test_skipping_the_centralized_reference_says_so_and_changes_nothing_else(tmp_path, capsys):
    deep = [*QUICK, "--algorithm", "deepafl", "--depth", "2", "--residual-width", "32", "--protocol", "plaintext"]
    runs = {}
    for name, flags in (("with", []), ("without", ["--no-centralized-reference"])):
        assert main([*deep, *flags, "--out", str(tmp_path / f"{name}.json")]) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    computed, skipped = runs["with"]["metrics"], runs["without"]["metrics"]
    assert computed["centralized_reference"] == "computed" and computed["max_rel_diff_to_centralized"] <= 1e-9
    assert skipped["centralized_reference"].startswith("skipped")
    assert skipped["centralized_accuracy"] is None and skipped["max_rel_diff_to_centralized"] is None
    for key in ("accuracy", "per_client_accuracy", "layer_accuracy", "personalized_accuracy"):
        assert skipped[key] == computed[key]
    assert re.search(r"centralized accuracy +skipped\n", format_summary(runs["without"]))
    assert main([*QUICK, "--algorithm", "fedavg", "--rounds", "1", "--out", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["metrics"]["centralized_reference"].startswith("none")
