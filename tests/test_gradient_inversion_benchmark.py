"""benchmarks/gradient_inversion.py keeps one results file: a rerun setting replaces its row, every other row
stays, and a data set the runner refused is listed until it has rows."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gradient_inversion", ROOT / "benchmarks" / "gradient_inversion.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def _row(dataset: str, model: str, batch: int, attack: str, psnr: float) -> dict:
    return {"dataset": dataset, "model": model, "algorithm": "fedsgd-cnn", "batch": batch, "attack": attack,
            "psnr_mean": psnr}


def _merge(path: Path, rows: list[dict], refused: dict[str, str] | None = None) -> dict:
    with benchmark.locked(path):
        benchmark.merge(path, rows, ["grid.png"], refused or {})
    return json.loads(path.read_text())


def test_rows_merge_by_setting_and_refusals_stay_until_the_data_set_runs(tmp_path):
    path = tmp_path / "gradient_inversion.json"
    _merge(path, [_row("mnist5k", "lenet", 64, "dlg", 8.0), _row("mnist5k", "convnet", 1, "idlg", 9.0)],
           {"samples-cifar100": "no test split"})
    document = _merge(path, [_row("mnist5k", "lenet", 64, "dlg", 8.5), _row("mnist5k", "lenet", 4, "dlg", 9.5)])
    keys = [(r["model"], r["batch"], r["attack"], r["psnr_mean"]) for r in document["rows"]]
    assert keys == [("convnet", 1, "idlg", 9.0), ("lenet", 4, "dlg", 9.5), ("lenet", 64, "dlg", 8.5)]  # sorted, replaced
    assert document["not_run"] == {"samples-cifar100": "no test split"} and document["grids"] == ["grid.png"]
    document = _merge(path, [_row("samples-cifar100", "lenet", 1, "dlg", 10.0)])
    assert document["not_run"] == {} and len(document["rows"]) == 4
