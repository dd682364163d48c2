import json
import subprocess
import sys
from pathlib import Path

import pytest

from secure_afl.cli import main

QUICK = ["run", "--dataset", "digits", "--resolution", "32", "--clients", "10", "--alpha", "0.1", "--quiet"]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_writes_the_documented_results(tmp_path, capsys):
    out = tmp_path / "run.json"
    code, _, err = run_cli([*QUICK, "--protocol", "plaintext", "--out", str(out)], capsys)
    assert code == 0
    assert "warning: protocol 'plaintext': the server sees every client's statistics" in err
    results = json.loads(out.read_text())
    assert results["schema_version"] == 1
    assert results["config"]["dataset"] == "digits" and results["config"]["clients"] == 10
    metrics = results["metrics"]
    assert metrics["max_rel_diff_to_centralized"] <= 1e-9
    assert metrics["accuracy"] == pytest.approx(metrics["centralized_accuracy"])
    assert 0.5 < metrics["accuracy"] <= 1.0
    assert len(metrics["per_client_accuracy"]) == 10
    assert set(results["timings_s"]) >= {"features", "local", "aggregation", "solve", "total"}
    triangle = 1280 * 1281 // 2
    assert results["bytes"]["per_client_upload_max"] == 8 * (triangle + 1280 * 10 + 1 + 10)
    assert results["bytes"]["model_broadcast"] == 8 * 1280 * 10
    assert results["bytes"]["server_received_total"] == 10 * results["bytes"]["per_client_upload_max"]
    assert sum(results["clients"]["train_sizes"]) == results["features"]["train"]
    env = results["environment"]
    assert env["device"] == "cpu" and env["packages"]["torch"] and env["packages"]["timm"] and env["seed"] == 0


def test_masking_is_the_default_and_matches_the_plaintext_run(tmp_path, capsys):
    runs = {}
    for protocol in ("mask", "plaintext"):
        out = tmp_path / f"{protocol}.json"
        args = [*QUICK, "--out", str(out)] + (["--protocol", protocol] if protocol == "plaintext" else [])
        code, _, err = run_cli(args, capsys)
        assert code == 0 and ("statistics in the clear" in err) == (protocol == "plaintext")
        assert ("masking over 10 clients cannot meet" in err) == (protocol == "mask")  # 10 clients: too few
        runs[protocol] = json.loads(out.read_text())
    masked, plain = runs["mask"], runs["plaintext"]
    assert masked["config"]["protocol"] == "mask"
    assert masked["metrics"]["max_rel_diff_to_centralized"] <= 1e-8
    assert masked["metrics"]["accuracy"] == plain["metrics"]["accuracy"]
    assert masked["metrics"]["per_client_accuracy"] == plain["metrics"]["per_client_accuracy"]
    details = masked["bytes"]["per_round"][0]["protocol"]
    assert details["graph"] == "complete" and details["threshold"] == 7 and details["fraction_bits"] >= 40
    stages = details["stages"]
    assert set(stages) == {"advertise", "share", "input", "consistency", "unmask"}
    plain_upload = plain["bytes"]["per_client_upload_max"]
    assert plain_upload < stages["input"]["upload_bytes"]["max"] < plain_upload + 200  # masked words + signed header
    assert masked["bytes"]["per_client_upload_max"] == sum(s["upload_bytes"]["max"] for s in stages.values())


def test_dropouts_leave_clients_out_and_match_centralized_training_on_the_rest(tmp_path, capsys):
    out = tmp_path / "drop.json"
    code, _, _ = run_cli([*QUICK, "--dropout", "input=0.2", "--dropout", "unmask=0.1", "--out", str(out)], capsys)
    assert code == 0
    results = json.loads(out.read_text())
    assert results["metrics"]["clients_included"] == 8
    assert len(results["bytes"]["included_clients"]) == 8
    assert results["metrics"]["max_rel_diff_to_centralized"] <= 1e-8
    dropped = results["bytes"]["per_round"][0]["protocol"]["dropped"]
    assert len(dropped["input"]) == 2 and len(dropped["unmask"]) == 1
    assert results["bytes"]["per_round"][0]["protocol"]["min_clients"] == 7  # 8 survivors: enough


@pytest.mark.parametrize("options, expected", [
    (dict(), 14),  # AFL asks every client: ⌊2 · 20/3⌋ + 1
    (dict(algorithm="deepafl", protocol="he-bfv", clients=10), 7),
    (dict(algorithm="fedavg", client_fraction=0.5), 7),  # P = 10 of 20
    (dict(algorithm="fedprox", client_fraction=0.1, clients=15), 2),  # P = ⌈1.5⌉ = 2
    (dict(min_clients=5), 5),
    (dict(protocol="plaintext"), None),
])
def test_the_minimum_aggregation_size_defaults_from_the_clients_each_round_asks(options, expected):
    from secure_afl.config import RunConfig

    config = RunConfig(**options)
    config.validate()
    assert config.protocol_options().get("min_clients") == expected


def test_unknown_dropout_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*QUICK, "--dropout", "later=0.1"])
    assert exit_info.value.code == 2
    assert "STAGE=FRACTION with STAGE one of advertise, share, input, consistency, unmask" in capsys.readouterr().err


def test_summary_table_is_printed(tmp_path, capsys):
    code, out, _ = run_cli([a for a in QUICK if a != "--quiet"], capsys)
    assert code == 0
    assert "global accuracy" in out and "max rel diff to central" in out


def test_results_are_the_same_for_every_partition(tmp_path, capsys):
    accuracies = set()
    for alpha in ("0.01", "100"):
        out = tmp_path / f"a{alpha}.json"
        assert run_cli([*QUICK, "--alpha", alpha, "--out", str(out)], capsys)[0] == 0
        accuracies.add(json.loads(out.read_text())["metrics"]["accuracy"])
    assert len(accuracies) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "mnist6k"], "unknown dataset 'mnist6k'"),
        (["--backbone", "resnet_18"], "unknown backbone"),
        (["--backbone", "resnet18"], "no local pretrained weights"),
        (["--weights", "/nonexistent/w.pth"], "does not exist"),
        (["--dataset", "imagefolder", "--data-dir", "/nonexistent/images"], "does not exist"),
        (["--clients", "0"], "clients must be at least 1"),
        (["--clients", "1000", "--min-client-size", "2"], "cannot give 1000 clients"),
        (["--gamma", "-1"], "gamma"),
        (["--threshold", "3"], "threshold must be between 6"),
        (["--neighbours", "5"], "neighbours must be even"),
        (["--fraction-bits", "60"], "overflows"),
        (["--dropout", "share=1.0"], "must be in [0, 1)"),
        (["--protocol", "plaintext", "--threshold", "7"], "threshold only apply to --protocol mask"),
        (["--protocol", "he-bfv", "--neighbours", "4"], "neighbours only apply to --protocol mask"),
        (["--protocol", "he-bfv", "--fraction-bits", "60"], "cannot carry"),
        (["--protocol", "he-ckks", "--limbs", "0"], "limbs must be at least 1"),
        (["--min-clients", "1"], "--min-clients must be from 2 (a sum of one client is that client's vector)"),
        (["--protocol", "he-bfv", "--min-clients", "11"], "to the 10 clients a round asks, got 11"),
        (["--algorithm", "fedavg", "--client-fraction", "0.5", "--min-clients", "6"], "to the 5 clients a round asks"),
        (["--protocol", "plaintext", "--min-clients", "5"],
         "min_clients only apply to --protocol mask / he-bfv / he-ckks / he-ckks-approx"),
        (["--min-clients", "9", "--dropout", "input=0.2"], "survivor set holds 8 clients, fewer than 9"),
        (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "device"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "out" / "run.json"
    code, _, err = run_cli([*QUICK, *extra, "--out", str(out)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("secure-afl: error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists() and not out.parent.exists()


def test_existing_results_are_not_overwritten_unless_asked(tmp_path, capsys):
    out = tmp_path / "run.json"
    out.write_text("precious")
    code, _, err = run_cli([*QUICK, "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err
    assert out.read_text() == "precious"
    assert run_cli([*QUICK, "--out", str(out), "--overwrite"], capsys)[0] == 0
    assert json.loads(out.read_text())["schema_version"] == 1


def test_console_script_reports_errors_with_a_non_zero_exit():
    exe = Path(sys.executable).parent / "secure-afl"
    assert exe.is_file(), "the secure-afl console script is not installed next to this interpreter"
    proc = subprocess.run([str(exe), "run", "--dataset", "nope"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("secure-afl: error: unknown dataset 'nope'")


@pytest.mark.slow
def test_default_job_reaches_the_target_accuracy(tmp_path, capsys):
    """The README's main job: mnist5k, 20 clients, alpha 0.1, shipped backbone."""
    out = tmp_path / "default.json"
    assert run_cli(["run", "--quiet", "--out", str(out)], capsys)[0] == 0
    results = json.loads(out.read_text())
    assert results["config"]["dataset"] == "mnist5k" and results["config"]["clients"] == 20
    assert results["config"]["protocol"] == "mask"
    assert results["metrics"]["accuracy"] >= 0.92
    assert results["metrics"]["max_rel_diff_to_centralized"] <= 1e-8


@pytest.mark.parametrize("protocol, limit", [("he-bfv", 1e-8), ("he-ckks", 1e-8), ("he-ckks-approx", 1e-4)])
def test_homomorphic_runs_match_centralized_training(tmp_path, capsys, protocol, limit):
    """Small features (a 64-wide buffer) keep the ciphertext count low; the bound is what each mode states."""
    out = tmp_path / f"{protocol}.json"
    code, _, err = run_cli([*QUICK, "--buffer-width", "64", "--protocol", protocol, "--out", str(out)], capsys)
    assert code == 0
    assert ("sums are approximate" in err) == (protocol == "he-ckks-approx")
    assert ("recovered the secret key" in err) == (protocol == "he-ckks-approx")  # its decryption leaks (README)
    results = json.loads(out.read_text())
    assert results["metrics"]["max_rel_diff_to_centralized"] <= limit
    details = results["bytes"]["per_round"][0]["protocol"]
    assert details["exact"] == (protocol != "he-ckks-approx") and details["key_holder"] == 0
    assert details["min_clients"] == 7  # ⌊2 · 10/3⌋ + 1, in the roster every participant holds
    length = results["bytes"]["per_round"][0]["length"]
    ciphertexts = details["ciphertexts_per_client"]
    assert ciphertexts == details["limbs"] * -(-(length + 1) // details["slots"])
    assert results["bytes"]["per_client_download_max"] >= details["public_context_bytes"]
