"""The operator's files of a deployed job, issued before any process starts.

``job.json`` (the run's configuration, for the server and every site), and for a secure protocol
``roster.json`` (the job's clients and their public identity keys, bound into every session) with one
private ``sites/K/identity.json`` per site. The roster and identities reach each site out of band, from
the operator, never from the server. ``node_config`` is the ``--node-config`` a site's SuperNode gets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from secure_afl.deploy.site import FeatureSource, Task, write_job


def toml_value(value) -> str:
    """A value as ``--node-config`` / ``--run-config`` parse it (a JSON string is a TOML basic string)."""
    return json.dumps(value) if isinstance(value, str) else str(value)


def issue_files(plan, directory: Path) -> dict[str, str]:
    """Write the job's files under ``directory`` for ``plan`` (``secure_afl.runner.plan_run``, which drew the
    roster): {"job": …, "roster": …, "sites": …} (no roster for plaintext)."""
    config, protocol = plan.config, plan.protocol
    task = Task(plan.dataset.num_classes, len(plan.train_y), FeatureSource.of(config))
    files = {"job": str(write_job(directory / "job.json", config, task)), "sites": str(directory / "sites")}
    for k in range(config.clients):
        (directory / "sites" / str(k) / "ledger").mkdir(parents=True, exist_ok=True)
    if getattr(protocol, "roster", None) is None:
        return files
    files["roster"] = str(protocol.roster.save(directory / "roster.json"))
    for k in range(config.clients):
        fd = os.open(directory / "sites" / str(k) / "identity.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:  # private to the site
            out.write(protocol.member(k).identity.to_json(protocol.roster.job_id))
    return files


def node_config(k: int, clients: int, files: dict[str, str], crash: str | None = None,
                dataset_path: str | None = None) -> str:
    """Site ``k``'s ``--node-config`` (of ``clients``): its partition and its files (paths as this machine sees them);
    ``dataset_path``: the site's own rows file (``secure-afl deploy rows``) instead of the shipped data set's
    partition."""
    entries = node_entries(k, clients, files, crash, dataset_path)
    return " ".join(f"{key}={toml_value(value)}" for key, value in entries.items())


def node_entries(k: int, clients: int, files: dict[str, str], crash: str | None = None,
                 dataset_path: str | None = None) -> dict[str, str | int]:
    """The entries of ``node_config``, as a dict (a simulated node reads them from a file: ``site.simulated_site``)."""
    entries = {"partition-id": k, "num-partitions": clients, "job": files["job"]}
    if dataset_path is not None:
        entries["dataset-path"] = dataset_path
    if "roster" in files:
        site = Path(files["sites"]) / str(k)
        entries.update({"roster": files["roster"], "identity": str(site / "identity.json"),
                        "ledger-dir": str(site / "ledger")})
    if crash is not None:
        entries["crash-at"] = crash
    return entries
