"""The results document: schema version, environment, atomic writing and the short human summary.

Results files are never silently replaced: an existing file is refused unless overwriting was
asked for, and the check happens before the run starts so a long run cannot end in a refusal.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import torch

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
    """Refuse, before any work, an output that exists (unless ``overwrite``) or that is a directory."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"output {str(path)!r} is a directory; give a file name such as results/run.json")
    if path.exists() and not overwrite:
        raise ConfigError(f"output {str(path)!r} already exists; choose another path or pass --overwrite")


def write_results(path: str | Path, results: dict, overwrite: bool = False) -> None:
    check_output_path(path, overwrite)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(results, out, indent=2, allow_nan=False)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_summary(results: dict) -> str:
    config, metrics, timings, sent = results["config"], results["metrics"], results["timings_s"], results["bytes"]
    rows = [
        ("algorithm / protocol", f"{config['algorithm']} / {config['protocol']}"),
        ("dataset", f"{config['dataset']}: {results['features']['train']} train, {results['features']['test']} test, "
                    f"{config['clients']} clients ({config['partition']}, alpha={config['alpha']})"),
        ("features", f"{config['backbone']} @ {config['resolution']}px, dim {results['features']['dim']}"),
        ("global accuracy", f"{metrics['accuracy']:.4f}"),
        ("centralized accuracy", _maybe(metrics["centralized_accuracy"])),
        ("max rel diff to central", "n/a" if metrics["max_rel_diff_to_centralized"] is None
         else f"{metrics['max_rel_diff_to_centralized']:.2e}"),
        ("personalized accuracy", _maybe(metrics["personalized_accuracy"])),
        *([("differential privacy", _dp_line(metrics["dp"]))] if "dp" in metrics else []),
        ("upload per client", f"{sent['per_client_upload_max'] / 2**20:.2f} MiB"),
        *([("transcript", f"{results['transcript']['path']} ({results['transcript']['rounds']} rounds, "
                          f"{results['transcript']['bytes'] / 2**20:.1f} MiB)")] if "transcript" in results else []),
        ("time", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())),
        ("device", results["environment"]["device_name"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _maybe(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _dp_line(dp: dict) -> str:
    line = f"ε {dp['epsilon']:.3g}, δ {dp['delta']:g}, z {dp['noise_multiplier']:.3g}"
    if dp.get("scope") != "statistics":
        return line + f", clip {dp['clip']:g} (DP-SGD)"
    return (line + f", σ {dp['sigma']:.3g}, C {dp['clip']:g}, {dp['placement']} (share σ {dp['share_sigma']:.3g}), "
            f"{dp['releases']} release(s), {dp['rows_clipped']} rows clipped, "
            f"{dp['entries_clipped_to_bound']} entries clipped, solve {dp['solve']}")
