"""Pictures of one results document (``secure-afl plot``): what people would rather look at than read.

Every results file gets per-client accuracy and bytes per stage; DeepAFL's adds accuracy per layer and an
iterative algorithm's (FedAvg, FedProx) accuracy per round. Each picture is drawn only from the document,
so a results file from another machine plots the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from protocols.files import write_atomically
from secure_afl.errors import ConfigError
from secure_afl.results import SCHEMA_VERSION, check_output_path

_REQUIRED = ("schema_version", "config", "metrics", "bytes")


def load_results(path: str | Path) -> dict:
    """A results document, or a ConfigError saying why the file is not one."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no results file at {str(path)!r}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{str(path)!r} is not a JSON file ({exc})") from None
    if not isinstance(document, dict) or any(key not in document for key in _REQUIRED):
        raise ConfigError(f"{str(path)!r} is not a secure-afl results file (it lacks "
                          f"{', '.join(k for k in _REQUIRED if not isinstance(document, dict) or k not in document)}); "
                          "give the JSON of `secure-afl run --out`")
    if document["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(f"{str(path)!r} has results schema {document['schema_version']}; this secure-afl plots "
                          f"schema {SCHEMA_VERSION}")
    return document


def pictures(document: dict) -> list[str]:
    """Names of the pictures this document gets, in drawing order."""
    metrics = document["metrics"]
    return ["per_client_accuracy", *(["layer_accuracy"] if metrics.get("layer_accuracy") else []),
            *(["round_accuracy"] if metrics.get("history") else []), "bytes_per_stage"]


def plot_results(document: dict, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Write one PNG per picture into ``out_dir``; every path is checked before the first is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.png" for name in pictures(document)}
    for path in paths.values():
        check_output_path(path, overwrite)
    title = f"{document['config']['algorithm']} / {document['config']['protocol']} on {document['config']['dataset']}"
    draw = {"per_client_accuracy": _per_client, "layer_accuracy": _per_layer, "round_accuracy": _per_round,
            "bytes_per_stage": _bytes}
    for name, path in paths.items():
        figure = draw[name](document)
        figure.suptitle(title)
        figure.tight_layout()
        write_atomically(path, lambda out, figure=figure: figure.savefig(out, format="png", dpi=120), binary=True)
        matplotlib.pyplot.close(figure)
    return list(paths.values())


def _axes(width: float = 7.0):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 4.0))


def _per_client(document: dict):
    metrics = document["metrics"]
    accuracy = [np.nan if a is None else a for a in metrics["per_client_accuracy"]]
    figure, ax = _axes()
    ax.bar(np.arange(len(accuracy)), accuracy, color="tab:blue", label="model each client uses, its held-out split")
    ax.axhline(metrics["accuracy"], color="black", linestyle="--", label=f"global test {metrics['accuracy']:.3f}")
    if metrics.get("centralized_accuracy") is not None:
        ax.axhline(metrics["centralized_accuracy"], color="tab:red", linestyle=":",
                   label=f"centralized {metrics['centralized_accuracy']:.3f}")
    ax.set(xlabel="client", ylabel="accuracy", ylim=(0, 1.05))
    ax.legend(loc="lower right", fontsize=8)
    return figure


def _per_layer(document: dict):
    metrics = document["metrics"]
    figure, ax = _axes()
    for key, label in (("layer_accuracy", "test"), ("layer_train_accuracy", "train")):
        if metrics.get(key):
            ax.plot(np.arange(len(metrics[key])), metrics[key], marker="o", label=label)
    ax.set(xlabel="layer t (classifier W_t on Φ_t)", ylabel="accuracy")
    ax.legend()
    return figure


def _per_round(document: dict):
    history = document["metrics"]["history"]
    figure, ax = _axes()
    ax.plot([row["round"] for row in history], [row["accuracy"] for row in history], marker=".")
    ax.set(xlabel="round", ylabel="global test accuracy")
    return figure


def _bytes(document: dict):
    """Per-client upload (max over clients) of every protocol stage, summed over rounds; a protocol without
    stages (plaintext, HE) shows its rounds' upload and download instead."""
    per_round = document["bytes"]["per_round"]
    stages: dict[str, float] = {}
    for row in per_round:
        for stage, cost in (row.get("protocol") or {}).get("stages", {}).items():
            stages[stage] = stages.get(stage, 0.0) + cost["upload_bytes"]["max"]
    if not stages:
        stages = {"upload": sum(row["upload_per_client_max"] for row in per_round),
                  "download": sum(row["download_per_client_max"] for row in per_round)}
    figure, ax = _axes()
    ax.bar(list(stages), [value / 2**20 for value in stages.values()], color="tab:green")
    ax.set(ylabel="MiB per client (max), all rounds", xlabel="protocol stage (or direction, without stages)")
    return figure
