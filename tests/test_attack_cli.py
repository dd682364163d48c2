"""`secure-afl attack` end to end: the issue's required invocations, saved transcripts, pictures, refusals."""

import json

import pytest

from protocols.transcript import Transcript
from secure_afl.cli import main

DEFAULT_JOB = ["--algorithm", "afl", "--dataset", "mnist5k", "--clients", "20", "--alpha", "0.1", "--seed", "0"]


def cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_singleton_under_masking_on_the_default_job_is_not_applicable(tmp_path, capsys):
    """The attack runs the default job itself; under plaintext the same report is checked on a saved transcript
    (the next test), so the default job runs once per protocol."""
    out = tmp_path / "report.json"
    code, printed, _ = cli(["attack", "--attack", "singleton", *DEFAULT_JOB, "--protocol", "mask",
                            "--out", str(out), "--quiet"], capsys)
    assert code == 0 and printed == ""
    report = json.loads(out.read_text())
    check_singleton_report(report, "mask")
    assert report["applicable"] is False and report["metrics"]["recovered_fraction"] == 0


def check_singleton_report(report: dict, protocol: str) -> None:
    assert report["attack"] == "singleton" and report["metrics"]["targets"] >= 1
    assert report["threshold"] == 0.9999 and report["threat_model"] and "baseline" in report["metrics"]
    assert report["config"]["protocol"] == protocol and report["environment"]["packages"]["torch"]


def test_a_run_transcript_is_attacked_and_pictured(default_job_plaintext, tmp_path, capsys):
    """`run --transcript` and `attack --attack all --grid` on it are the session's shared default job
    (tests/conftest.py); one attack by name on the same transcript runs here."""
    job = default_job_plaintext
    assert job.run_code == 0
    run = json.loads(job.run.read_text())
    assert run["transcript"]["rounds"] == 1 and run["transcript"]["bytes"] > 8 * 820_000 * 20
    assert Transcript.load(job.transcript).rounds[0].name == "afl/statistics"
    assert job.attack_code == 0 and "singleton" in job.printed and "difference: not applicable" in job.printed
    report = json.loads(job.report.read_text())
    rows = {row["attack"]: row for row in report["summary"]}
    assert rows["singleton"]["recovered_fraction"] == 1.0 and rows["counts"]["recovered_fraction"] == 1.0
    assert not rows["difference"]["applicable"] and not rows["buffer"]["applicable"]
    assert (job.directory / "grid-singleton.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = tmp_path / "singleton.json"
    code, printed, _ = cli(["attack", "--attack", "singleton", "--transcript", str(job.transcript), "--out",
                            str(single), "--quiet"], capsys)
    assert code == 0 and printed == ""
    report = json.loads(single.read_text())
    check_singleton_report(report, "plaintext")
    assert report["applicable"] and report["metrics"]["recovered_fraction"] >= 0.99


@pytest.mark.parametrize("args, message", [
    (["--attack", "telepathy"], "unknown attack 'telepathy'"),
    (["--attack", "counts", "--grid", "x.png"], "reconstructs no single images"),
    (["--attack", "singleton", "--victim", "3"], "--victim only applies to the difference attack"),
    (["--attack", "difference", "--victim", "99", "--protocol", "plaintext"], "victims [99] are not clients"),
    (["--attack", "singleton", "--transcript", "nowhere"], "is not a transcript"),
])
def test_bad_attack_options_get_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["attack", *args, "--dataset", "digits", "--resolution", "32", "--clients", "10"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_report_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "report.json"
    out.write_text("keep")
    code, _, err = cli(["attack", "--attack", "counts", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and "already exists" in err and out.read_text() == "keep"
