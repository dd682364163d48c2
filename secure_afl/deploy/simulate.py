"""``secure-afl deploy simulate``: the same Flower app on Flower's simulation engine (Ray), for many clients.

The ServerApp and ClientApp of ``secure-afl deploy local`` run unchanged; only the nodes are virtual:
one SuperLink in simulation mode runs the ServerApp and ``--nodes`` virtual SuperNodes whose messages
Ray actors answer (as many at once as the machine has cores over ``client_cpus``). The path is
``flwr run <app> <connection> --federation-config "num-supernodes=N"`` against a SuperLink this module
starts itself (``flower-superlink --simulation``) on a free port, not Flower's "managed" local SuperLink
(``address = ":local:"``): that one always listens on the fixed ports 39091/39093, is detached from the
CLI and outlives it, and a second simulation on the machine would reuse whatever one is already there.
``flwr.simulation.run_simulation`` (one process) is deprecated since 1.42 and would put Ray in our own
process. A virtual node gets only ``partition-id`` and ``num-partitions`` from Flower, so the operator's
files for each site (job, roster, identity, ledger, its own rows) reach it as ``site.simulated_site``
describes: from a file per site named through the environment, never through the server.

The operator's side (issued files, each site's rows, the evaluation, the results document) is
``local.run_deployed``'s, as for ``deploy local``; every process started here, Ray's included, is
stopped by pid when the run returns, fails or is interrupted. Flower and Ray stay offline (no
telemetry, usage statistics, update check or dependency installation).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from secure_afl.config import RunConfig
from secure_afl.deploy.issue import node_entries
from secure_afl.deploy.local import (LocalDeployment, Processes, check_federation, run_deployed, start_superlink,
                                     submit)
from secure_afl.deploy.site import NODE_CONFIG_FILE, SIMULATED_SITES
from secure_afl.errors import ConfigError

# Ray's usage statistics phone home unless turned off, and it warns of a GPU setting no run here uses. Ray keeps its
# session (sockets, logs) under RAY_TMPDIR: a directory of the run's own, removed afterwards.
RAY_OFFLINE = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


@dataclass(frozen=True)
class Simulation:
    nodes: int
    # A stage's messages queue for the few Ray actors, so it lasts about nodes × one message (1,000 nodes on 2 loaded
    # cores: up to ~9 min); a virtual node never dies, so the deadline only guards against a run that hangs.
    stage_timeout: float = 3600.0
    connect_timeout: float = 3600.0
    run_timeout: float = 3600.0  # the whole `flwr run`
    client_cpus: int = 1  # Ray CPUs per ClientApp actor (whole CPUs in flwr 1.41): cores / client_cpus answer at once
    workdir: str | None = None  # kept when given; a temporary directory (removed afterwards) otherwise

    def check(self) -> None:
        check_federation(self)
        if not isinstance(self.client_cpus, int) or self.client_cpus < 1:
            raise ConfigError(f"--client-cpus must be a whole number of CPUs (at least 1), got {self.client_cpus}")
        if self.client_cpus > (os.cpu_count() or 1):
            raise ConfigError(f"--client-cpus {self.client_cpus} is more than this machine's {os.cpu_count()} cores: "
                              "Ray could never place a ClientApp")


def run_simulation(config: RunConfig, simulation: Simulation, transcript: str | None = None,
                   overwrite: bool = False) -> dict:
    """Run ``config`` over ``simulation.nodes`` virtual SuperNodes; the results document of ``secure-afl run`` plus a
    ``deployment`` block as ``deploy local`` writes it (per-stage bytes and latencies), with the simulation's peak
    memory. Every check that can refuse the job runs before any process starts."""
    simulation.check()
    _check_ray()
    ray_dir = Path(tempfile.mkdtemp(prefix="sa-ray-"))  # short: Ray's unix sockets live under it (107-byte limit)
    try:
        env = {**RAY_OFFLINE, "RAY_TMPDIR": str(ray_dir)}

        def launch(processes: Processes, work: Path, files: dict[str, str], rows: dict[int, str]):
            return _launch(processes, work, files, rows, simulation)

        return run_deployed(config, simulation.nodes, simulation.stage_timeout, simulation.workdir, launch, transcript,
                            overwrite, env=env, memory=True)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


def _check_ray() -> None:
    from importlib.util import find_spec

    if find_spec("ray") is None:
        raise ConfigError("the simulation engine needs Ray: pip install 'secure-afl[deploy]' (flwr[simulation])")


def _launch(processes: Processes, work: Path, files: dict[str, str], rows: dict[int, str], simulation: Simulation):
    """Each site's node config where its virtual node finds it, the SuperLink in simulation mode, ``flwr run``."""
    sites = work / "sites"
    for k in range(simulation.nodes):
        entries = node_entries(k, simulation.nodes, files, dataset_path=rows[k])
        (sites / str(k) / NODE_CONFIG_FILE).write_text(json.dumps(entries))
    processes.env[SIMULATED_SITES] = str(sites)
    try:
        start_superlink(processes, work, LocalDeployment(simulation.nodes, connect_timeout=simulation.connect_timeout),
                        flags=("--simulation", "--isolation", "subprocess"))
        federation = f"num-supernodes={simulation.nodes} client-resources-num-cpus={simulation.client_cpus}"
        report, seconds = submit(processes, work, files, simulation.stage_timeout, simulation.connect_timeout,
                                 simulation.run_timeout, flags=("--federation-config", federation))
    finally:
        processes.stop()  # Ray's daemons leave the tree: Processes.stop finds them by their environment
    return report, seconds, {"engine": "flower simulation (ray)", "ray": _ray_version(),
                             "client_cpus": simulation.client_cpus, "cores": os.cpu_count()}


def _ray_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None

