"""The results document: schema version, environment, atomic writing and the short human summary.

Results files are never silently replaced: an existing file is refused unless overwriting was
asked for, and the check (with whether the directory takes a new file at all) happens before the run
starts, so a long run cannot end in a refusal. Files appear atomically with the user's normal mode.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

import torch

from protocols.files import unwritable_reason, write_atomically
from secure_afl.errors import ConfigError

SCHEMA_VERSION = 1
_PACKAGES = ("secure-afl", "torch", "torchvision", "timm", "numpy", "scipy", "cryptography")


def environment(device: torch.device, seed: int) -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu ({_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {
        "device": str(device),
        "device_name": device_name,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "seed": seed,
    }


def _cpu_model() -> str:
    """The CPU's marketing name where Linux tells it (platform.processor() is empty there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_output_path(path: str | Path | None, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (unless ``overwrite``), that is a directory, or that
    cannot be created."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"output {str(path)!r} is a directory; give a file name such as results/run.json")
    if path.exists() and not overwrite:
        raise ConfigError(f"output {str(path)!r} already exists; choose another path or pass --overwrite")
    if (reason := unwritable_reason(path)) is not None:
        raise ConfigError(f"cannot write output {str(path)!r}: {reason}")


def write_results(path: str | Path, results: dict, overwrite: bool = False) -> None:
    check_output_path(path, overwrite)

    def dump(out) -> None:
        json.dump(results, out, indent=2, allow_nan=False)
        out.write("\n")

    write_atomically(path, dump)


def merge_rows(kept: list[dict], measured: list[dict], key) -> list[dict]:
    """The rows of a benchmark's results file after a run: a measured row replaces the kept row with the same
    ``key(row)`` where it stands, a new one is appended, every other row stays. Settings can then run separately
    (and interrupted runs keep what they measured) without one run erasing another's rows."""
    rows = list(kept)
    where = {key(r): i for i, r in enumerate(rows)}
    for r in measured:
        if key(r) in where:
            rows[where[key(r)]] = r
        else:
            where[key(r)] = len(rows)
            rows.append(r)
    return rows


def format_summary(results: dict) -> str:
    config, metrics, timings, sent = results["config"], results["metrics"], results["timings_s"], results["bytes"]
    rows = [
        ("algorithm / protocol", f"{config['algorithm']} / {config['protocol']}"),
        ("dataset", f"{config['dataset']}: {results['features']['train']} train, {results['features']['test']} test, "
                    f"{config['clients']} clients ({_partition(config)})"),
        ("features", f"{config['backbone']} @ {config['resolution']}px, dim {results['features']['dim']}"),
        ("global accuracy", _accuracy(metrics["accuracy"], results["features"]["test"])),
        ("centralized accuracy", "skipped" if str(metrics.get("centralized_reference")).startswith("skipped")
         else _accuracy(metrics["centralized_accuracy"], results["features"]["test"])),
        ("max rel diff to central", "n/a" if metrics["max_rel_diff_to_centralized"] is None
         else f"{metrics['max_rel_diff_to_centralized']:.2e}"),
        ("personalized accuracy", _accuracy(metrics["personalized_accuracy"], *_held_out(results))),
        *([("differential privacy", _dp_line(metrics))] if "dp" in metrics else []),
        *([("masking", _masking_line(sent["per_round"][0]["protocol"]))] if config["protocol"] == "mask" else []),
        ("upload per client", _upload_line(sent)),
        *([("transcript", f"{results['transcript']['path']} ({results['transcript']['rounds']} rounds, "
                          f"{results['transcript']['bytes'] / 2**20:.1f} MiB)")] if "transcript" in results else []),
        ("time", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())),
        ("device", results["environment"]["device_name"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _accuracy(value, n: int, clients: int | None = None) -> str:
    """An accuracy with the number of test samples behind it: 1.0000 on two images is no result."""
    over = "" if clients is None else f" over {clients} clients"
    return "n/a" if value is None else f"{value:.4f} (n = {n}{over})"


def _held_out(results: dict) -> tuple[int, int]:
    """Test samples and clients behind the personalized accuracy (a client without held-out samples has none)."""
    sizes = [size for size in results["clients"]["held_out_sizes"] if size]
    return sum(sizes), len(sizes)


def _partition(config: dict) -> str:
    """The partition with only the parameter it uses."""
    if config["partition"] == "dirichlet":
        return f"dirichlet, alpha={config['alpha']}"
    if config["partition"] == "shards":
        return f"shards, {config['shards_per_client']} per client"
    return config["partition"]


def _dp_line(metrics: dict) -> str:
    dp = metrics["dp"]
    if dp.get("scope") != "statistics":
        return (f"ε {_epsilon(dp)}, δ {dp['delta']:g}, z {dp['noise_multiplier']:.3g}, σ {dp['sigma']:.3g}, "
                f"clip {dp['clip']:g}, noise/signal per step {dp['noise_to_signal_per_step']:.2g}, "
                f"{_clamped(metrics)} (DP-SGD)")
    line = f"ε {dp['epsilon']:.3g}, δ {dp['delta']:g}, z {dp['noise_multiplier']:.3g}"
    return (line + f", σ {dp['sigma']:.3g}, C {dp['clip']:g}, {dp['placement']} (share σ {dp['share_sigma']:.3g}), "
            f"{dp['releases']} release(s), {dp['rows_clipped']} rows clipped, "
            f"{_at_sites(dp['entries_clipped_to_bound'])} entries clipped, solve {dp['solve']}" + _layer_clips(dp))


def _epsilon(dp: dict) -> str:
    """DP-SGD's ε: the largest client's, or in a deployed job's results each site's own (with the target)."""
    if dp["epsilon"] is not None:
        return f"{dp['epsilon']:.3g}"
    target = "" if dp["target_epsilon"] is None else f", each at most the target {dp['target_epsilon']:g}"
    return f"{_at_sites(None)}{target}"


def _clamped(metrics: dict) -> str:
    if metrics["parameters_clamped"] is None:
        return f"parameter values clamped {_at_sites(None)}"
    return f"{metrics['parameters_clamped']} of {metrics['parameter_values_sent']} parameter values clamped"


def _at_sites(count: int | None) -> str:
    """A count the clients keep: None in a deployed job's results (each site keeps its own)."""
    return "(counted at the sites)" if count is None else str(count)


def _upload_line(sent: dict) -> str:
    """The largest upload per role: a plain client's, and the HE key holder's apart (it also decrypts)."""
    roles = sent.get("upload_max_by_role", {"client": sent["per_client_upload_max"]})
    if set(roles) == {"client"}:
        return f"{roles['client'] / 2**20:.2f} MiB"
    return ", ".join(f"{role} {size / 2**20:.2f} MiB" for role, size in roles.items())


def _masking_line(details: dict) -> str:
    """The first round's graph and the bounds it reaches against the job's targets and assumptions."""
    targets = details["targets"]

    def bits(log2):
        return "0 (impossible under the model)" if log2 is None else f"2^{log2:.1f}"

    verdict = "met" if details["targets_met"] else "NOT met"
    return (f"{details['graph']} graph, k {details['neighbours']}, t {details['threshold']}: security "
            f"{bits(details['security_log2'])}, failure {bits(details['failure_log2'])}; targets 2^-"
            f"{targets['security_bits']} / 2^-{targets['failure_bits']} {verdict} (assuming "
            f"{targets['corrupt_fraction']:.0%} corrupt, {targets['dropout_fraction']:.0%} dropouts)")


def _layer_clips(dp: dict) -> str:
    """DeepAFL's per-layer clip norms and the rows each clipped (empty for AFL / APFL)."""
    if "layer_clips" not in dp:
        return ""
    rows = dp["rows_clipped_by_layer_clips"]
    return "; layer clips " + ", ".join(f"{name} {norm:.3g} ({_at_sites(rows[name])} rows)"
                                        for name, norm in dp["layer_clips"].items())
