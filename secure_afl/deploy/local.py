"""``secure-afl deploy local``: a whole federation on loopback, as real processes, then the run's results.

The operator's side of a deployed job, on one machine: it issues the roster and one identity file per
site (a secure protocol), writes the job file and each site's own rows (``dataset-path``: its partition's
backbone features, so no node loads the backbone), starts a SuperLink and one SuperNode per client (each
a process of its own, told its partition and its files through ``--node-config``; HTTPS with a CA made
for the run under ``tls``, registered node keys only under ``auth``), submits the Flower app with ``flwr run`` and waits for it. The server (ServerApp) writes its report, the model and the
transcript (and an iterative algorithm's model after every round); this process then evaluates the
model (and those) as ``secure-afl run`` does (the operator holds the data set here) and returns the
same results document, with the deployment's per-stage bytes and latencies beside it. Every process it started, and every process those started, is stopped by pid
when it returns, fails or is interrupted. Flower stays offline: no telemetry, no update check, no
dependency installation at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from protocols.transcript import check_destination, size_on_disk
from secure_afl.algorithms.registry import algorithm
from secure_afl.config import RunConfig
from secure_afl.deploy.credentials import Certificates, make_certificates, make_node_key
from secure_afl.deploy.issue import issue_files, node_config, toml_value
from secure_afl.deploy.server_app import HISTORY, MODEL, REPORT, TRANSCRIPT
from secure_afl.deploy.site import check_deployable, read_task, write_site_rows
from secure_afl.errors import ConfigError, SecureAFLError
from secure_afl.model import Model
from secure_afl.runner import (Timer, Training, job_metrics, load_features, plan_run, results_document,
                               site_algorithm)

APP = Path(__file__).with_name("app")
MARKER = "SECURE_AFL_DEPLOYMENT"  # in the environment of every process a deployment starts (``Processes.stop``)
CONNECTION = "secure-afl-local"
OFFLINE = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
# A SuperExec looks for a new message to start a ClientApp for once a second by default, and every protocol stage
# waits for that poll on every node. Each poll is an HTTP request its SuperNode serves: at K = 10 on loopback,
# polling every 0.2 s kept 0.19 of the machine's 2 cores busy with nothing to do (0.06 every 1 s), CPU the
# stage's ClientApp processes wait for. 0.5 s halves that at a quarter second of latency per message.
POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"}
SAMPLE_SECONDS = 0.5  # how often a run's processes are sampled (``Usage``)
STAGES = ("hello", "plaintext", "advertise", "share", "input", "consistency", "unmask", "open", "encrypt", "decrypt",
          "personalize")


class DeploymentError(SecureAFLError):
    """The deployed job did not finish: a process failed to start, or the server's run failed."""


@dataclass(frozen=True)
class LocalDeployment:
    nodes: int
    stage_timeout: float = 60.0
    connect_timeout: float = 120.0
    run_timeout: float = 1800.0  # the whole `flwr run`
    crash: dict[int, str] = field(default_factory=dict)  # node → stage at which its processes are killed (a drill)
    tls: bool = False  # HTTPS between every process and the SuperLink, with a CA made for this run
    auth: bool = False  # SuperNode authentication: only the nodes the operator registered are accepted (needs tls)
    workdir: str | None = None  # kept when given; a temporary directory (removed afterwards) otherwise

    def check(self) -> None:
        check_federation(self)
        for node, stage in self.crash.items():
            if not 0 <= node < self.nodes or stage not in STAGES:
                raise ConfigError(f"--crash {node}={stage}: nodes are 0..{self.nodes - 1}, stages {', '.join(STAGES)}")
        if self.auth and not self.tls:
            raise ConfigError("--auth (SuperNode authentication) needs --tls: Flower refuses it over plain HTTP")


def check_federation(settings) -> None:
    """What every way of running a federation (``LocalDeployment``, ``simulate.Simulation``) refuses alike: fewer
    than two nodes, a deadline that is not a positive number of seconds."""
    if settings.nodes < 2:
        raise ConfigError(f"--nodes must be at least 2, got {settings.nodes}")
    for name in ("stage_timeout", "connect_timeout", "run_timeout"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds, got "
                              f"{getattr(settings, name)}")


class Processes:
    """The processes a deployment started, each in a session of its own; ``stop`` ends them and every
    process they started (SuperExec, ServerApp and ClientApp processes), by pid."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env = env | {MARKER: secrets.token_hex(8)}
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, process))
        return process

    def pids(self) -> list[int]:
        """Every started process and its live descendants."""
        return descendants([process.pid for _, process in self.started])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to every process of the deployment, SIGKILL to those still alive after ``grace`` seconds: first its
        process tree, then any process that left the tree (a child whose parent died is re-parented: the ClientApp
        of a node that crashed, Ray's daemons), found by this deployment's marker in its environment."""
        for find in (self.pids, self.strays):
            pids = find()
            for pid in pids:
                _signal(pid, signal.SIGTERM)
            _wait_gone(pids, grace)
            for pid in pids:
                if _alive(pid):
                    _signal(pid, signal.SIGKILL)
            _wait_gone(pids, grace)
        for _, process in self.started:
            process.wait()

    def strays(self) -> list[int]:
        """Live processes that carry this deployment's marker, in its tree or not."""
        return [pid for pid in marked(f"{MARKER}={self.env[MARKER]}".encode()) if pid != os.getpid()]


def marked(marker: bytes) -> list[int]:
    """Live processes whose environment holds ``marker`` (``NAME=value``); another user's are not readable: skipped."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if _alive(pid)]


def _wait_gone(pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def descendants(roots: list[int]) -> list[int]:
    """The roots and every live process below them (from /proc: parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Usage:
    """What a run's processes use, sampled every ``SAMPLE_SECONDS``: the CPU seconds of every process of the tree as
    last seen, and with ``memory`` the largest total proportional set size (PSS: shared pages split among their
    processes, so Ray's shared object store counts once). Sampled because RUSAGE_CHILDREN misses most of a
    deployment: a SuperNode never waits for its SuperExec, which outlives it and is reaped by init with the CPU of
    every ClientApp process it reaped, and Ray's processes are not reaped by the run's tree at all. An exited process
    stays a zombie, its final CPU readable, until its parent reaps it (a SuperExec when it next starts a process), so
    little is missed: at most a process's last ``SAMPLE_SECONDS`` when it is reaped at once. ``by_program`` splits
    the CPU by the program each process runs (``flwr-clientapp``: one process per message a site answers), which is
    where a deployment's cost is decided on a shared machine."""

    def __init__(self, processes: Processes, memory: bool = False):
        self.processes = processes
        self.memory = memory
        self.peak_mib = 0.0
        self._cpu: dict[int, float] = {}
        self._program: dict[int, str] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def by_program(self) -> dict[str, dict]:
        """{program: {"processes": how many ran it, "cpu_s": their CPU seconds}}, the most CPU first."""
        split: dict[str, dict] = {}
        for pid, seconds in self._cpu.items():
            entry = split.setdefault(self._program.get(pid, "?"), {"processes": 0, "cpu_s": 0.0})
            entry["processes"] += 1
            entry["cpu_s"] += seconds
        return dict(sorted(split.items(), key=lambda item: -item[1]["cpu_s"]))

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            pids = self.processes.pids()
            if self.memory:
                self.peak_mib = max(self.peak_mib, sum(_pss_kib(pid) for pid in pids) / 1024)
            for pid in pids:
                self._cpu[pid] = max(self._cpu.get(pid, 0.0), _cpu_seconds(pid))
                if pid not in self._program:
                    self._program[pid] = _program(pid)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _cpu_seconds(pid: int) -> float:
    """User + system seconds of a live process (/proc/PID/stat, fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _program(pid: int) -> str:
    """The program a process runs: the script a Python interpreter was started with (Flower's tools are scripts),
    else the executable's name."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    names = [os.path.basename(a) for a in argv[:2]]
    if names[0].startswith("python") and len(names) > 1 and not argv[1].startswith("-"):
        return names[1]
    return names[0]


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"{name} exited with code {process.returncode} before it listened on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(f"{name} did not listen on port {port} within {timeout:.0f} s")


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise ConfigError(f"{name} not found beside {sys.executable}: install Flower with `pip install 'secure-afl[deploy]'`")
    return str(path)


@contextmanager
def _workdir(given: str | None):
    if given is not None:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise ConfigError(f"--workdir {given!r} is not empty; choose an empty or new directory")
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="secure-afl-deploy-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_local(config: RunConfig, deployment: LocalDeployment, transcript: str | None = None,
              overwrite: bool = False) -> dict:
    """Run ``config`` over ``deployment.nodes`` SuperNodes on loopback; the results document of ``secure-afl run``
    plus a ``deployment`` block (per-stage bytes and latencies, the processes' exit). Every check that can
    refuse the job runs before any process starts."""
    deployment.check()

    def launch(processes: Processes, work: Path, files: dict[str, str], rows: dict[int, str]):
        report, seconds = _run_processes(processes, work, files, rows, deployment)
        return report, seconds, {
            "engine": "flower", "transport": f"{'https' if deployment.tls else 'http'} (loopback)",
            "node_authentication": deployment.auth, "crash": {str(k): v for k, v in deployment.crash.items()}}

    return run_deployed(config, deployment.nodes, deployment.stage_timeout, deployment.workdir, launch, transcript,
                        overwrite)


def run_deployed(config: RunConfig, nodes: int, stage_timeout: float, workdir: str | None, launch,
                 transcript: str | None = None, overwrite: bool = False, env: dict[str, str] | None = None,
                 memory: bool = False) -> dict:
    """The operator's side of a job run by Flower processes on this machine (``run_local``, ``simulate``): the job's
    files and each site's rows are issued, ``launch(processes, work, files, rows)`` runs the federation and returns
    (the server's report, the ``flwr run`` seconds, the engine's own entries of the ``deployment`` block), every
    process is stopped, and the model the server wrote is evaluated here. ``env``: added to every Flower process's;
    ``memory``: the block also gives the processes' peak memory (``Usage``), in total and per node."""
    config = replace(config, clients=nodes)
    check_deployable(config)
    plan = plan_run(config)  # the operator's roster is drawn here, for exactly this job
    if transcript is not None:
        check_destination(transcript, overwrite)
    timer = Timer()
    with _workdir(workdir) as work, timer.phase("total"):
        for sub in ("logs", "flwr", "out", "app"):
            (work / sub).mkdir()
        files = issue_files(plan, work)
        features = load_features(plan, timer)  # the operator's evaluation data; here also each site's own rows
        rows, source = {}, read_task(files["job"]).features  # the job's features made every site's rows here
        for k, indices in enumerate(plan.client_indices):
            held = plan.held_out[k]  # a personalizing algorithm's site evaluates its own model on these
            rows[k] = str(write_site_rows(work / "sites" / str(k) / "rows.npz", source, features.train_raw[indices],
                                          plan.train_y[indices], features.test_raw[held], plan.test_y[held]))
        shutil.copy(APP / "pyproject.toml", work / "app" / "pyproject.toml")
        processes = Processes(flower_env(work) | (env or {}), work / "logs")
        usage = Usage(processes, memory)
        try:
            with timer.phase("deployment"):
                server_report, flwr_seconds, engine = launch(processes, work, files, rows)
        finally:
            usage.stop()
            processes.stop()
            leftover = [pid for pid in processes.pids() if _alive(pid)]
        model = Model.load(work / "out" / MODEL).predictor
        entry = algorithm(config.algorithm)
        job = entry.configure(config)
        with timer.phase("evaluation"):
            metrics = job_metrics(plan, features, job, model, server_report["bytes"]["included_clients"],
                                  personal_accuracy=site_evaluations(server_report, nodes))
            if "history" in server_report:
                metrics["history"] = evaluated_history(server_report["history"], work / "out" / HISTORY, features)
            if config.dp_epsilon is not None or config.dp_noise is not None:
                metrics.update(deployed_privacy(config, entry, job, plan, features))
        extra = {"deployment": {
            **engine, "flower": _flower_version(), "nodes": nodes, "stage_timeout_s": stage_timeout,
            "flwr_run_s": flwr_seconds, "processes_cpu_s": usage.cpu_s, "processes_cpu_by_program": usage.by_program(),
            "server_timings_s": server_report.get("timings_s", {}),
            "stages": server_report["stages"], "hello": server_report["hello"],
            "processes_left_running": leftover,
            **({"peak_memory_mib": usage.peak_mib, "peak_memory_per_client_mib": usage.peak_mib / nodes} if memory
               else {}),
            **({"personalized": server_report["personalized"]} if "personalized" in server_report else {}),
        }}
        if transcript is not None:
            if Path(transcript).exists():
                shutil.rmtree(transcript)  # a transcript: check_destination refused anything else
            shutil.move(str(work / "out" / TRANSCRIPT), transcript)
            extra["transcript"] = {"path": str(transcript), "rounds": len(server_report["bytes"]["per_round"]),
                                   "bytes": size_on_disk(transcript)}
    return results_document(plan, features, Training(None, {}, metrics, server_report["bytes"]), timer, **extra)


def site_evaluations(server_report: dict, nodes: int) -> dict[int, float] | None:
    """The personalized accuracy each site reported (server_app.personalize), NaN where it withheld it or did not
    answer; None for an algorithm without personalization."""
    if "personalized" not in server_report:
        return None
    reported = {int(c): e["accuracy"] for c, e in server_report["personalized"].items()}
    return {k: float("nan") if reported.get(k) is None else reported[k] for k in range(nodes)}


def deployed_privacy(config: RunConfig, entry, job, plan, features) -> dict:
    """The ``dp`` block of ``secure-afl run`` for a deployed job (``Algorithm.report`` with no clients): the same
    guarantee from the same public calibration (DP-SGD's noise multiplier from each site's row count, as its client
    calibrates it); what only a site counts (rows and entries clipped, parameters clamped, DP-SGD's accountant) stays
    there (None), and the noise's randomness is the sites' (secure_afl/privacy.py)."""
    server, _ = site_algorithm(config, config.clients, features.data.train_x.shape[1], plan.dataset.num_classes,
                               len(plan.train_y))
    block = entry.report(job, server, None, features)
    generator = ("numpy PCG64 per release" if block["dp"].get("scope") == "statistics"
                 else "torch generator per round (Opacus' Poisson sampling and noise)")
    block["dp"]["noise_rng"] = (f"{generator}, seeded by HMAC-SHA256(round name) under a 256-bit key each site drew "
                                "from secrets and kept")
    return block


def evaluated_history(rows: list[dict], directory: Path, features) -> list[dict]:
    """The server's per-round rows with the global test accuracy of each round's model (``runner.History``'s
    rows): the operator holds the test split, the server does not."""
    test_x, test_y = features.data.test_x.cpu().numpy(), features.data.test_y
    return [{**row, "accuracy": Model.load(directory / f"{row['round']}.npz").predictor.accuracy(test_x, test_y)}
            for row in rows]


def stage_table(deployment: dict) -> list[str]:
    """The printed account of a deployed run's stages (the results' ``deployment`` block): one line per stage name, in
    the order they first ran, with how often it ran, its total and longest seconds, and the most payload bytes one
    client sent and received in it. A long job runs hundreds of stages (DeepAFL at T = 20: 41 rounds of five); the
    results JSON keeps every one of them, round by round."""
    rows: dict[str, list] = {}
    for stage in [deployment["hello"] | {"stage": "hello"}, *deployment["stages"]]:
        row = rows.setdefault(stage["stage"], [0, 0.0, 0.0, 0, 0])
        row[0] += 1
        row[1] += stage["seconds"]
        row[2] = max(row[2], stage["seconds"])
        row[3] = max(row[3], stage["upload_bytes"]["max"])
        row[4] = max(row[4], stage["download_bytes"]["max"])
    lines = [f"{'stage':<12} {'runs':>5} {'total s':>9} {'max s':>8} {'max up B':>12} {'max down B':>12}"]
    return lines + [f"{name:<12} {runs:>5} {total:>9.2f} {longest:>8.2f} {up:>12,} {down:>12,}"
                    for name, (runs, total, longest, up, down) in rows.items()]


@dataclass(frozen=True)
class Federation:
    """A running SuperLink as SuperNodes and the ``flwr`` CLI reach it."""

    port: int
    certificates: Certificates | None  # None: plain HTTP (``--insecure``)

    def supernode_flags(self) -> list[str]:
        if self.certificates is None:
            return ["--insecure", "--superlink", f"127.0.0.1:{self.port}"]
        return ["--root-certificates", str(self.certificates.ca), "--superlink", f"127.0.0.1:{self.port}"]

    def register(self, processes: Processes, public_key: Path) -> None:
        """``flwr supernode register``: the SuperLink accepts a SuperNode holding the matching private key."""
        done = subprocess.run([_tool("flwr"), "supernode", "register", str(public_key), CONNECTION], env=processes.env,
                              capture_output=True, timeout=120, check=False, start_new_session=True)
        if done.returncode != 0:
            raise DeploymentError(f"registering {public_key.name} failed: {done.stdout.decode(errors='replace')[-500:]}")


def start_superlink(processes: Processes, work: Path, deployment: LocalDeployment, flags: tuple[str, ...] = ()
                    ) -> Federation:
    """The SuperLink on a free loopback port (HTTPS with a throw-away CA under ``--tls``, node authentication under
    ``--auth``; ``flags``: more of its options), and the ``flwr`` CLI's connection to it in
    ``work/flwr/config.toml``."""
    port = free_port()
    certificates = make_certificates(work / "certs") if deployment.tls else None
    security = ["--insecure"] if certificates is None else certificates.superlink_flags()
    if deployment.auth:
        security.append("--enable-supernode-auth")
    superlink = processes.start("superlink", [_tool("flower-superlink"), *security,
                                              "--disable-runtime-dependency-installation", *flags,
                                              "--host", "127.0.0.1", "--port", str(port)])
    trust = "insecure = true" if certificates is None else f"root-certificates = {toml_value(str(certificates.ca))}"
    (work / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n{trust}\n')
    wait_for_port(port, superlink, deployment.connect_timeout, "the SuperLink")
    return Federation(port, certificates)


def flower_env(work: Path) -> dict[str, str]:
    """The environment of every Flower process of a run: offline, its own FLWR_HOME, Flower's tools on PATH."""
    return {**os.environ, **OFFLINE, **POLL, "FLWR_HOME": str(work / "flwr"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def _run_processes(processes: Processes, work: Path, files: dict[str, str], rows: dict[int, str],
                   deployment: LocalDeployment):
    """SuperLink, SuperNodes, ``flwr run``; the server's report and the run's wall time."""
    federation = start_superlink(processes, work, deployment)
    for k in range(deployment.nodes):
        identity = []
        if deployment.auth:
            private, public = make_node_key(work / "keys", f"node{k}")
            federation.register(processes, public)
            identity = ["--auth-supernode-private-key", str(private)]
        processes.start(f"supernode-{k}", [
            _tool("flower-supernode"), *federation.supernode_flags(), *identity, "--port", str(free_port()),
            "--node-config", node_config(k, deployment.nodes, files, deployment.crash.get(k), rows[k])])
    return submit(processes, work, files, deployment.stage_timeout, deployment.connect_timeout,
                  deployment.run_timeout)


def submit(processes: Processes, work: Path, files: dict[str, str], stage_timeout: float, connect_timeout: float,
           run_timeout: float, flags: tuple[str, ...] = ()):
    """``flwr run`` of the app in ``work/app`` on the federation of ``work/flwr/config.toml`` (``flags``: more of its
    options), until the run ends; the server's report (refused unless the run is done) and the run's wall time."""
    settings = {"job": files["job"], "out": str(work / "out"), "roster": files.get("roster", ""),
                "stage-timeout": float(stage_timeout), "connect-timeout": float(connect_timeout)}
    run_config = " ".join(f"{key}={toml_value(v)}" for key, v in settings.items())
    start = time.monotonic()
    with open(work / "logs" / "flwr-run.log", "wb") as log:
        try:
            subprocess.run([_tool("flwr"), "run", str(work / "app"), CONNECTION, "--stream", "--run-config", run_config,
                            *flags], env=processes.env, stdout=log, stderr=subprocess.STDOUT, timeout=run_timeout,
                           check=False, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"the deployed run did not finish within {run_timeout:.0f} s "
                                  f"(logs: {work / 'logs'})") from exc
    seconds = time.monotonic() - start
    report_path = work / "out" / REPORT
    if not report_path.exists():
        tail = (work / "logs" / "flwr-run.log").read_text(errors="replace")[-2000:]
        raise DeploymentError(f"the server wrote no report; `flwr run` said: {tail.strip().splitlines()[-1:]}")
    report = json.loads(report_path.read_text())
    if report.get("status") != "done":
        raise DeploymentError(f"the deployed run failed: {report.get('error', 'unknown error')}")
    return report, seconds


def _flower_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None
