"""``secure-afl deploy simulate``: the deployed Flower app on Flower's simulation engine (Ray).

The end-to-end runs start a SuperLink in simulation mode, which starts Ray (tens of seconds on a
loaded 2-core machine), so they are marked slow; the refusals run before any process starts and are
fast. They skip only where Flower's simulation extra is not installed (`make test` installs it).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from secure_afl.cli import EXIT_INTERRUPTED, main  # noqa: E402
from secure_afl.config import RunConfig  # noqa: E402
from secure_afl.deploy.site import NODE_CONFIG_FILE, SIMULATED_SITES, Site  # noqa: E402
from secure_afl.deploy.local import Processes, Usage, marked  # noqa: E402
from secure_afl.deploy.simulate import Simulation, run_simulation  # noqa: E402
from secure_afl.errors import ConfigError  # noqa: E402
from secure_afl.runner import Timer, load_features, plan_run, train  # noqa: E402

JOB = {"dataset": "digits", "resolution": 32, "partition": "iid", "protocol": "mask"}
ROOT = Path(__file__).resolve().parents[1]


def left_running(work: Path) -> list[int]:
    """Live processes of the simulation whose work directory is ``work``: each Flower and Ray process carries the
    run's FLWR_HOME, or the sites directory its virtual nodes read, in its environment."""
    return marked(f"FLWR_HOME={work / 'flwr'}".encode()) + marked(f"{SIMULATED_SITES}={work / 'sites'}".encode())


@pytest.mark.slow
def test_simulated_masked_afl_equals_the_in_process_run_and_stops_every_process(tmp_path):
    work = tmp_path / "work"
    results = run_simulation(RunConfig(clients=3, **JOB), Simulation(3, stage_timeout=300.0, workdir=str(work)),
                             transcript=str(tmp_path / "transcript"))
    plan = plan_run(RunConfig(clients=3, **JOB))
    training = train(plan, load_features(plan, Timer()), Timer())
    weights = np.load(work / "out" / "model.npz", allow_pickle=False)["weights"]
    expected = training.server.model().weights
    assert np.max(np.abs(weights - expected)) / np.max(np.abs(expected)) <= 1e-9
    assert results["metrics"]["accuracy"] == training.metrics["accuracy"]
    assert results["bytes"]["included_clients"] == [0, 1, 2]
    deployment = results["deployment"]
    assert deployment["engine"] == "flower simulation (ray)" and deployment["nodes"] == 3
    assert [s["stage"] for s in deployment["stages"]] == ["advertise", "share", "input", "consistency", "unmask"]
    assert all(s["answered"] == [0, 1, 2] for s in deployment["stages"])
    assert deployment["peak_memory_mib"] > 0 and deployment["processes_cpu_s"] > 0
    assert results["transcript"]["rounds"] == 1 and (tmp_path / "transcript").is_dir()
    # every virtual node read its own files: the ledger of each site holds its contribution
    assert all(any((work / "sites" / str(k) / "ledger").iterdir()) for k in range(3))
    assert deployment["processes_left_running"] == [] and left_running(work) == []


# The CLI as a terminal starts it: SIGINT at its default action and not blocked. A process inherits both from its
# parent, so without this the test harness's own signal state (which earlier tests' libraries may change) would
# decide whether Ctrl-C can reach the CLI at all: a full suite run once saw the CLI finish its job after the SIGINT.
AS_A_TERMINAL_STARTS_IT = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                           "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                           "runpy.run_module('secure_afl.cli', run_name='__main__')")


def argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # it exited meanwhile
        return []


@pytest.mark.slow
def test_ctrl_c_during_a_simulation_stops_every_process_it_started(tmp_path):
    """Ctrl-C while ``flwr run`` is running the job: the CLI reports the interruption (exit 130), stops every process
    it started (the SuperLink, Ray's daemons) and writes no results."""
    work = tmp_path / "work"
    cli = subprocess.Popen([sys.executable, "-c", AS_A_TERMINAL_STARTS_IT, "deploy", "simulate", "--nodes", "3",
                            *(f"--{k}={v}" for k, v in JOB.items()), "--workdir", str(work), "--quiet",
                            "--out", str(tmp_path / "r.json")], env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any(b"run" in argv(pid) for pid in marked(f"{SIMULATED_SITES}={work / 'sites'}".encode())):  # `flwr run`
        assert cli.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1)
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == EXIT_INTERRUPTED and b"secure-afl: interrupted" in err, err.decode(errors="replace")[-2000:]
    assert left_running(work) == [] and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv, reason", [
    (["--nodes", "1"], "at least 2"),
    (["--nodes", "3", "--client-cpus", "0"], "whole number of CPUs"),
    (["--nodes", "3", "--client-cpus", "4096"], "cores"),
    (["--nodes", "3", "--stage-timeout", "0"], "stage-timeout"),
    (["--nodes", "3", "--dropout", "input=0.5"], "dropouts are real"),
    (["--nodes", "3", "--protocol", "he-ckks-approx"], "recovered the secret key"),
])
def test_bad_input_is_refused_before_anything_starts(tmp_path, capsys, argv, reason):
    work = tmp_path / "work"
    code = main(["deploy", "simulate", *argv, *(f"--{k}={v}" for k, v in JOB.items() if k != "protocol"),
                 "--workdir", str(work), "--out", str(tmp_path / "r.json")])
    assert code != 0 and reason in capsys.readouterr().err
    assert not work.exists() and not (tmp_path / "r.json").exists()


def test_a_virtual_node_reads_its_own_node_config_from_the_operators_sites_directory(tmp_path, monkeypatch):
    site = tmp_path / "sites" / "1"
    site.mkdir(parents=True)
    entries = {"partition-id": 1, "num-partitions": 3, "job": "/jobs/job.json", "ledger-dir": "/ledger/1"}
    (site / NODE_CONFIG_FILE).write_text(json.dumps(entries))
    monkeypatch.setenv(SIMULATED_SITES, str(tmp_path / "sites"))
    assert Site.from_node_config({"partition-id": 1, "num-partitions": 3}).node_config == entries
    # a SuperNode given its job keeps its own node config; a file for another federation is refused
    given = {"partition-id": 0, "num-partitions": 3, "job": "/mine.json"}
    assert Site.from_node_config(given).node_config == given
    with pytest.raises(ConfigError, match="not the node config of simulated node"):
        Site.from_node_config({"partition-id": 1, "num-partitions": 4})
    with pytest.raises(ConfigError, match="cannot read its node config"):
        Site.from_node_config({"partition-id": 2, "num-partitions": 3})
    monkeypatch.delenv(SIMULATED_SITES)
    with pytest.raises(ConfigError, match="lacks"):
        Site.from_node_config({"partition-id": 1, "num-partitions": 3})


def test_the_usage_sampler_sees_the_memory_and_cpu_of_a_started_process_and_its_child(tmp_path):
    """A process that spins for a second and holds 200 MiB in a child it starts: both are counted."""
    child = "import time; b = bytearray(200 * 2**20); t = time.time()\nwhile time.time() - t < 1.5: pass"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    processes = Processes(dict(os.environ), tmp_path)
    usage = Usage(processes, memory=True)
    processes.start("spinner", [sys.executable, "-c", parent]).wait(timeout=60)
    usage.stop()
    assert usage.peak_mib >= 200 and usage.cpu_s >= 0.3
