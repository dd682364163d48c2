"""The claim-by-claim report: rows built from real attack runs, verdicts that follow the measurements, and the
``secure-afl report`` command's checks."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from attacks.protocol.catalogue import CASES, outcome_row
from attacks.report import grid_row, load_grid, write_report
from attacks.suite import attack_run
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.errors import ConfigError

TINY = RunConfig(protocol="plaintext", dataset="samples-cifar10", clients=2, alpha=1.0)
ATTACKS = ["counts", "class-means", "singleton", "gram"]


def _row(config: RunConfig, defence: str = "none") -> dict:
    document, _ = attack_run(ATTACKS, config)
    return {"dataset": config.dataset, "protocol": config.protocol, "defence": defence, "alpha": config.alpha,
            "clients": config.clients, "options": {}, **grid_row(document, 0.9999), "seconds": 0.0}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    rows = [_row(TINY), _row(replace(TINY, protocol="mask"))]
    retry = replace(TINY, protocol="mask", clients=4, min_clients=2)
    difference = []
    for defended in (False, True):
        report = attack_run(["difference"], retry, victims=(1,), defended=defended)[0]["attacks"]["difference"]
        difference.append({"protocol": "mask", "clients": 4, "alpha": 1.0, "defended": defended,
                           "recovered_fraction": report["metrics"]["recovered_fraction"],
                           "baseline_recovered_fraction": report["metrics"]["baseline"]["recovered_fraction"],
                           "refusals": sorted({r["error"] for r in report.get("refusals", [])})})
    active = [outcome_row(next(case for case in CASES if case.name == "masking.substituted_keys"))]
    grid = {"schema_version": 1, "benchmark": "privacy_grid", "exact_threshold": 0.9999, "rows": rows, "left_out": [],
            "environment": rows[0]["environment"], "difference": difference, "active_server": active}
    path = tmp_path_factory.mktemp("grid") / "privacy_grid.json"
    path.write_text(json.dumps(grid))
    return path


def test_rows_hold_what_the_attacks_measured(grid):
    plain, masked = load_grid(grid)["rows"]
    # every training image of the two clients is a singleton of its class: all recovered and identified
    assert plain["samples_recovered_exactly"] == plain["training_samples"] == 18
    assert plain["samples_identified"] == 18 and plain["attacks"]["singleton"]["metrics"]["recovered_fraction"] == 1.0
    # under masking no per-client attack applies, and nothing is recovered
    assert masked["samples_recovered_exactly"] == 0 and not masked["attacks"]["singleton"]["applicable"]
    assert masked["model"]["accuracy"] == pytest.approx(plain["model"]["accuracy"])


def test_verdicts_follow_the_rows(grid, tmp_path):
    out = tmp_path / "report.md"
    written = write_report(load_grid(grid), out)
    text = out.read_text()
    assert len(written) == 5 and all(p.is_file() and p.stat().st_size > 0 for p in written)
    claim1 = text.split("## Claim 1")[1].split("## Claim 2")[0]
    claim2 = text.split("## Claim 2")[1].split("## Claim 3")[0]
    assert "Verdict: **refuted**: in 1 of 1 undefended settings" in claim1
    assert "Verdict for an honest server: **supported** (0 of 1 settings leak" in claim2
    assert "| plaintext | none | samples-cifar10 | 2 | 1 | 1.000 | 18 / 18 | 18 / 18 | — | yes |" in claim1
    # the retrying server: exact without the ledgers, refused with them
    assert "| mask | 4 | 1 | off | 1.000 | 0.000 | — |" in claim2
    assert "| mask | 4 | 1 | on | 0.000 | 0.000 | StatisticReusedError |" in claim2
    assert "1 of 1 attacks that rebuild a victim's input without the defence meet typed refusals" in claim2
    assert "input rebuilt exactly | nothing | AuthenticationError ×1 |" in claim2


def test_the_report_command_checks_before_writing(grid, tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["report", "--grid", str(grid), "--out", str(out), "--quiet"]) == 0
    assert out.is_file() and (tmp_path / "r-theorem4.png").is_file()
    assert main(["report", "--grid", str(grid), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["report", "--grid", str(tmp_path / "absent.json"), "--out", str(tmp_path / "x.md")]) == 2
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "attack_sweep", "rows": [1]}))
    with pytest.raises(ConfigError, match="not a privacy grid"):
        load_grid(tmp_path / "other.json")
    assert not (tmp_path / "x.md").exists()
