"""What a new user tripped over: damaged cache entries, unwritable outputs, Ctrl-C, silent runs, usage errors,
help without defaults, options for another partition and accuracies without their sample count (issue 16)."""

import json
import logging
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from protocols import Targets, choose_parameters
from protocols.graph import minimum_threshold
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.data.datasets import load_dataset
from secure_afl.errors import ConfigError
from secure_afl.features.backbone import load_backbone
from secure_afl.features.cache import CacheWarning, FeatureCache
from secure_afl.features.extract import cached_features
from secure_afl.results import format_summary, write_results

# 18 train and 2 test images at 32 px: a whole run in seconds
TINY = ["--dataset", "samples-cifar10", "--resolution", "32", "--clients", "2"]


def cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def mnist_samples():
    return load_backbone(), load_dataset("samples-mnist").pools["all"]


def _truncate(path, other):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path, other):
    path.write_bytes(b"PK\x03\x04 not really a zip archive")


def _other_entry(path, other):
    shutil.copyfile(other, path)


def _without_checksum(path, other):
    with np.load(path) as stored:
        arrays = {"features": stored["features"], "labels": stored["labels"]}
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "is unreadable (BadZipFile"),
    (_garbage, "is unreadable"),
    (_other_entry, "fails its checksum"),
    (_without_checksum, "has no checksum"),
])
def test_a_damaged_or_foreign_cache_entry_is_reported_and_recomputed(mnist_samples, tmp_path, damage, reason):
    backbone, source = mnist_samples
    cache = FeatureCache(tmp_path)
    kwargs = dict(dataset="samples-mnist", pool="all", batch_size=20, device=torch.device("cpu"), cache=cache)
    fresh, _ = cached_features(backbone, source, resolution=32, **kwargs)
    entry = next(tmp_path.glob("*.npz"))
    cached_features(backbone, source, resolution=40, **kwargs)
    other = next(p for p in tmp_path.glob("*.npz") if p != entry)
    damage(entry, other)
    with pytest.warns(CacheWarning, match=re.escape(f"feature cache entry {entry} {reason}")):
        again, hit = cached_features(backbone, source, resolution=32, **kwargs)
    assert not hit and np.array_equal(again, fresh)
    third, hit = cached_features(backbone, source, resolution=32, **kwargs)  # the entry was rewritten, sound
    assert hit and np.array_equal(third, fresh)


def test_a_truncated_cache_file_costs_one_warning_line_not_the_run(tmp_path, capsys):
    args = ["run", *TINY, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--out"]
    assert main([*args, str(tmp_path / "first.json")]) == 0
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])
    capsys.readouterr()
    code, _, err = cli([*args, str(tmp_path / "second.json")], capsys)
    assert code == 0 and "Traceback" not in err
    warned = [line for line in err.splitlines() if "feature cache entry" in line]
    assert len(warned) == 1 and warned[0].startswith("secure-afl: warning:") and "recomputing it" in warned[0]
    first, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("first", "second"))
    assert first["metrics"]["accuracy"] == second["metrics"]["accuracy"]
    assert second["features"]["cache_hits"] == 0


def _under_proc(tmp_path):
    return Path("/proc/secure-afl-test.json")


def _parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "out.json"


def _read_only(tmp_path):
    if os.geteuid() == 0:  # root writes into a 0555 directory; sysfs refuses new files even to root
        return Path("/sys/secure-afl-test.json")
    (tmp_path / "ro").mkdir(mode=0o555)
    return tmp_path / "ro" / "out.json"


@pytest.mark.parametrize("where, message", [
    (_under_proc, "'/proc' is not writable"),
    (_parent_is_a_file, "file' is not a directory"),
    (_read_only, "is not writable"),
])
@pytest.mark.parametrize("option", ["run --out", "run --transcript", "attack --out", "attack --grid"])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch, where, message, option):
    def started(*args, **kwargs):
        raise AssertionError("the job started")

    monkeypatch.setattr("secure_afl.runner.run", started)
    monkeypatch.setattr("attacks.suite.attack_run", started)
    command, flag = option.split()
    extra = ["--attack", "singleton"] if command == "attack" else []
    path = where(tmp_path).with_suffix(".png" if flag == "--grid" else ".json")
    code, _, err = cli([command, *extra, *TINY, flag, str(path)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("secure-afl: error: cannot") and message in err


def test_a_picture_format_matplotlib_cannot_draw_is_refused_before_the_attack(tmp_path, capsys, monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("the attack started")

    monkeypatch.setattr("attacks.suite.attack_run", started)
    code, _, err = cli(["attack", "--attack", "singleton", *TINY, "--grid", str(tmp_path / "grid.txt")], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot draw a 'txt' picture; use one of" in err
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_the_users_normal_mode_and_a_failed_write_leaves_nothing(tmp_path):
    previous = os.umask(0o022)
    try:
        write_results(tmp_path / "run.json", {"a": 1})
        FeatureCache(tmp_path / "cache").store("k", np.zeros((2, 3), np.float32), np.arange(2))
        os.umask(0o077)
        write_results(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "cache" / "k.npz").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):  # NaN is refused half-way through the dump
        write_results(tmp_path / "bad.json", {"a": 1, "b": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "private.json", "run.json"]


@pytest.mark.parametrize("where", ["training", "cache write"])
def test_ctrl_c_stops_cleanly_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch, where):
    def interrupt(*args, **kwargs):
        if where == "cache write":  # half an entry is on disk when the key is pressed
            args[0].write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr("secure_afl.runner.federate" if where == "training" else "numpy.savez", interrupt)
    out, transcript, cache = tmp_path / "out" / "run.json", tmp_path / "out" / "t", tmp_path / "cache"
    code, printed, err = cli(["run", *TINY, "--cache-dir", str(cache), "--out", str(out), "--transcript",
                              str(transcript)], capsys)
    assert code == 130 and printed == ""
    assert err.splitlines()[-1] == "secure-afl: interrupted" and "Traceback" not in err
    assert not out.exists() and not transcript.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert [p.suffix for p in cache.iterdir()] == ([] if where == "cache write" else [".npz"])


@pytest.mark.parametrize("command", [["run"], ["attack", "--attack", "singleton"]])
def test_quiet_with_nowhere_to_write_is_refused_before_any_work(capsys, monkeypatch, command):
    def started(*args, **kwargs):
        raise AssertionError("the job started")

    monkeypatch.setattr("secure_afl.runner.run", started)
    monkeypatch.setattr("attacks.suite.attack_run", started)
    code, printed, err = cli([*command, *TINY, "--quiet"], capsys)
    assert code == 2 and printed == ""
    assert err == "secure-afl: error: --quiet without --out would run the whole job and show nothing; add --out " \
                  "FILE or drop --quiet\n"


@pytest.mark.parametrize("args, expected", [
    (["run", "--clients", "x"], "secure-afl: error: argument --clients: invalid int value: 'x'\n"
                                "(see secure-afl run --help)\n"),
    (["attack", "--dataset", "digits"], "secure-afl: error: the following arguments are required: --attack\n"
                                        "(see secure-afl attack --help)\n"),
    (["train"], "secure-afl: error: argument command: invalid choice: 'train' (choose from 'run', 'attack', "
                "'deploy', 'report', 'predict', 'plot')\n(see secure-afl --help)\n"),
])
def test_a_usage_error_is_one_line_and_a_pointer_to_the_help(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == expected and captured.out == ""


def test_help_shows_meaningful_defaults_and_version_is_printed(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    lines, option = {}, None
    for line in capsys.readouterr().out.splitlines():  # an option's help, continued on indented lines
        if line.startswith("  -"):
            option = line.split()[0].rstrip(",")
            lines[option] = line
        elif option is not None and line.startswith("    "):
            lines[option] += " " + line.strip()
        else:
            option = None
    defaults = RunConfig()
    for option in ("--clients", "--alpha", "--seed", "--resolution", "--buffer-activation", "--rounds", "--dp-delta",
                   "--dp-accountant", "--deep-activation", "--partition", "--algorithm", "--head"):
        value = getattr(defaults, option[2:].replace("-", "_"))
        assert f"(default: {value})" in lines[option], lines[option]
    assert "default" not in lines["--no-cache"] and "default" not in lines["--buffer-bias"]
    assert not [line for line in lines.values() if "(default: None)" in line or "(default: [])" in line
                or "(default: False)" in line or "(default: True)" in line]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"secure-afl {metadata.version('secure-afl')}\n"


def test_options_of_another_partition_are_refused():
    for options, message in [(dict(partition="iid", alpha=0.5), "alpha only apply to --partition dirichlet"),
                             (dict(partition="shards", alpha=0.5), "alpha only apply to --partition dirichlet"),
                             (dict(shards_per_client=3), "shards_per_client only apply to --partition shards"),
                             (dict(partition="iid", shards_per_client=3), "shards_per_client only apply")]:
        with pytest.raises(ConfigError, match=message):
            RunConfig(**options).validate()
    RunConfig(partition="shards", shards_per_client=3).validate()


def test_the_printed_run_shows_n_the_partition_rounds_and_verbose_logs(capsys):
    handlers = list(logging.getLogger("secure_afl").handlers)
    code, printed, err = cli(["run", *TINY, "--partition", "iid", "-v"], capsys)
    assert code == 0
    rows = dict(line.split("  ", 1) for line in printed.splitlines())
    assert rows["dataset"].strip().endswith("2 clients (iid)")
    assert rows["global accuracy"].strip().endswith("(n = 2)")
    assert rows["centralized accuracy"].strip().endswith("(n = 2)")
    assert rows["personalized accuracy"].strip().endswith("over 2 clients)")
    assert "secure-afl: warning: samples-cifar10: the test split holds 2 images for 10 classes" in err
    assert "rounds (mask)" in err and "1/1" in err  # the progress bar per round
    assert "secure-afl: secure_afl.runner: round afl/statistics: 2 clients asked" in err
    assert logging.getLogger("secure_afl").handlers == handlers  # -v leaves no handler behind


def test_the_table_names_only_the_partitions_own_parameter(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["run", *TINY, "--quiet", "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("rounds (mask)") == 0  # --quiet: no progress bar
    results = json.loads(out.read_text())
    summary = format_summary(results)
    assert "(dirichlet, alpha=0.1)" in summary
    results["config"].update(partition="shards", shards_per_client=3)
    assert "(shards, 3 per client)" in format_summary(results) and "alpha" not in format_summary(results)


def test_the_recorded_configuration_holds_only_the_options_that_apply(tmp_path):
    """Item 13: a results document lists no option of another algorithm, protocol or partition, and loses
    nothing by it (the omitted options hold their defaults)."""
    out = tmp_path / "run.json"
    assert main(["run", *TINY, "--quiet", "--out", str(out)]) == 0
    config = json.loads(out.read_text())["config"]
    assert {"alpha", "threshold", "neighbours", "security_bits", "gamma"} <= set(config)  # afl, mask, dirichlet
    assert not {"shards_per_client", "limbs", "key_holder", "depth", "rounds", "lr", "refine_width",
                "cnn"} & set(config)
    recorded = RunConfig(**config)
    assert recorded.applicable() == config and recorded == RunConfig(**{**config, "shards_per_client": 2})
    he = RunConfig(algorithm="deepafl", protocol="he-bfv", partition="iid", limbs=2).applicable()
    assert he["limbs"] == 2 and "depth" in he and not {"alpha", "threshold", "rounds"} & set(he)


def test_masking_parameters_meet_the_targets_when_any_choice_can():
    """Item 5: k and t are searched together; the smallest k for which some t meets both targets is chosen."""
    chosen = choose_parameters(100)
    assert chosen.meets_targets and not chosen.complete
    assert chosen.security_log2 <= -40 and chosen.failure_log2 <= -20
    smaller = chosen.neighbours - 2
    assert not any(choose_parameters(100, threshold=t, neighbours=smaller).meets_targets
                   for t in range(minimum_threshold(smaller), smaller + 2))
    relaxed = choose_parameters(20, targets=Targets(corrupt_fraction=0.01, dropout_fraction=0.01, security_bits=20,
                                                    failure_bits=10))
    assert relaxed.meets_targets


def test_unmet_masking_targets_are_warned_and_shown_and_the_targets_are_options(capsys):
    code, printed, err = cli(["run", *TINY], capsys)
    assert code == 0
    unmet = choose_parameters(2)
    assert not unmet.meets_targets
    assert "secure-afl: warning: masking over 2 clients cannot meet 2^-40 security and 2^-20 failure" in err
    rows = dict(line.split("  ", 1) for line in printed.splitlines())
    assert rows["masking"].strip().endswith("targets 2^-40 / 2^-20 NOT met (assuming 5% corrupt, 10% dropouts)")
    code, printed, err = cli(["run", *TINY[:-1], "4", "--partition", "iid", "--corrupt-fraction", "0.001",
                              "--dropout-fraction", "0.001", "--security-bits", "2", "--failure-bits", "2"], capsys)
    assert code == 0 and "cannot meet" not in err
    rows = dict(line.split("  ", 1) for line in printed.splitlines())
    assert "targets 2^-2 / 2^-2 met (assuming 0% corrupt, 0% dropouts)" in rows["masking"]
    code, _, err = cli(["run", *TINY, "--corrupt-fraction", "1.5"], capsys)
    assert code == 2 and err.strip().startswith("secure-afl: error:") and "corrupt_fraction" in err
    code, _, err = cli(["run", *TINY, "--protocol", "plaintext", "--security-bits", "30"], capsys)
    assert code == 2 and "only apply to --protocol mask" in err


def test_he_runs_take_the_dropout_options(capsys):
    config = RunConfig(protocol="he-bfv", dropout={"input": 0.2}, seed=4)
    config.validate()
    assert config.protocol_options()["dropout"] == {"input": 0.2} and config.protocol_options()["dropout_seed"] == 4
    code, _, err = cli(["run", *TINY, "--protocol", "he-bfv", "--dropout", "share=0.1"], capsys)
    assert code == 2 and err.strip() == "secure-afl: error: unknown dropout stages ['share']; stages are input"


def test_upload_is_reported_per_role_under_he(synthetic):
    """Item 13: the HE key holder's upload (context, decryptions) is reported apart from the clients'."""
    from protocols import make_protocol
    from secure_afl.algorithms.afl import AFLClient, AFLConfig, AFLServer, statistics_bound
    from secure_afl.results import _upload_line
    from secure_afl.runner import Timer, federate

    x, labels, classes = synthetic
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    parts = np.array_split(np.arange(len(labels)), 4)
    server = AFLServer(x.shape[1], classes, AFLConfig(), statistics_bound(len(labels), 1.0))
    clients = {k: AFLClient(x[p], labels[p], classes) for k, p in enumerate(parts)}
    sent = federate(server, clients, make_protocol("he-bfv", key_holder=2), Timer())
    roles = sent["upload_max_by_role"]
    assert set(roles) == {"client", "key holder"} and roles["key holder"] > roles["client"]
    assert roles["key holder"] == sent["per_client_upload_max"]
    assert _upload_line(sent) == f"client {roles['client'] / 2**20:.2f} MiB, key holder {roles['key holder'] / 2**20:.2f} MiB"
    plain = federate(AFLServer(x.shape[1], classes, AFLConfig(), statistics_bound(len(labels), 1.0)),
                     {k: AFLClient(x[p], labels[p], classes) for k, p in enumerate(parts)}, make_protocol("mask"),
                     Timer())
    assert set(plain["upload_max_by_role"]) == {"client"} and _upload_line(plain).endswith(" MiB")


DIGITS = ["--dataset", "digits", "--resolution", "32", "--clients", "5", "--alpha", "1", "--protocol", "plaintext"]


def test_each_head_gets_its_own_validated_learning_rate():
    """Item 3: the MLP head no longer inherits the linear head's rate (which left it at chance)."""
    from secure_afl.algorithms.fedavg import DEFAULT_LR, FedAvgConfig
    from secure_afl.algorithms.registry import algorithm

    fedavg_config = algorithm("fedavg").configure

    assert DEFAULT_LR["mlp"] != DEFAULT_LR["linear"]
    assert FedAvgConfig(head="mlp").lr == DEFAULT_LR["mlp"] and FedAvgConfig().lr == DEFAULT_LR["linear"]
    assert fedavg_config(RunConfig(algorithm="fedavg", head="mlp")).lr == DEFAULT_LR["mlp"]
    assert fedavg_config(RunConfig(algorithm="fedavg", head="mlp", lr=0.3)).lr == 0.3


def test_a_run_at_chance_says_so_and_names_the_likely_cause(capsys):
    code, _, err = cli(["run", *DIGITS, "--algorithm", "fedavg", "--rounds", "2", "--lr", "1e-6"], capsys)
    assert code == 0
    assert re.search(r"secure-afl: warning: final accuracy 0\.\d+ is within noise of chance \(0\.\d+, the most frequent "
                     r"test class, n = 359\); the likely cause is the learning rate 1e-06 \(--lr\)",
                     err)
    code, _, err = cli(["run", *DIGITS], capsys)
    assert code == 0 and "within noise of chance" not in err


def test_dp_sgd_shows_its_noise_and_clamps_and_warns_when_they_dominate(tmp_path, capsys):
    """Item 4: ε, δ, σ and the clamp count are in the table; dominant noise or clamping is warned about."""
    out = tmp_path / "run.json"
    code, printed, err = cli(["run", *DIGITS, "--algorithm", "fedavg", "--rounds", "2", "--dp-epsilon", "3",
                              "--param-bound", "0.01", "--out", str(out)], capsys)
    assert code == 0
    metrics = json.loads(out.read_text())["metrics"]
    dp = metrics["dp"]
    assert dp["sigma"] == pytest.approx(dp["noise_multiplier"] * dp["clip"]) and dp["noise_to_signal_per_step"] > 1
    assert metrics["parameters_clamped"] > 0.01 * metrics["parameter_values_sent"] > 0
    row = dict(line.split("  ", 1) for line in printed.splitlines() if "  " in line)["differential privacy"].strip()
    assert row.startswith(f"ε {dp['epsilon']:.3g}, δ 1e-05, z {dp['noise_multiplier']:.3g}, σ {dp['sigma']:.3g}")
    assert f"{metrics['parameters_clamped']} of {metrics['parameter_values_sent']} parameter values clamped" in row
    assert "secure-afl: warning: DP-SGD noise dominates every step" in err
    assert "parameter values sent" in err and "were clamped to the public box ±0.01 (--param-bound)" in err
