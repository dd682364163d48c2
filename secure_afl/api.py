"""The Python entry point: ``secure_afl.run(config)`` runs one simulated federation and returns its model.

One obvious entry point, as Opacus has: a configuration in (a ``RunConfig``, a dict of its fields, or keyword
options), a ``RunResult`` out holding the trained ``Model`` (predict, score, save), the results document (the
dict ``secure-afl run --out`` writes) and, when one was asked for, the transcript's path. Options are validated
before any data is read, with the same messages the CLI prints.

Example (examples/python_api.py, which the tests run)::

    import secure_afl

    result = secure_afl.run(dataset="digits", resolution=32, clients=10, algorithm="afl")
    print(result.results["metrics"]["accuracy"])
    result.model.save("digits-afl.npz")
    model = secure_afl.Model.load("digits-afl.npz")
    features, labels = model.dataset_features("digits", "test")
    assert model.score(features, labels) == result.results["metrics"]["accuracy"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from secure_afl.config import RunConfig
from secure_afl.errors import ConfigError
from secure_afl.model import Model, trained_model
from secure_afl.runner import complete_run


@dataclass(frozen=True)
class RunResult:
    model: Model  # the trained (global) model with its input pipeline
    results: dict  # the results document: config, metrics, timings, bytes, environment
    transcript: Path | None = None  # the server's view of every round, when ``transcript=`` asked for it


def run(config: RunConfig | Mapping | None = None, *, transcript: str | Path | None = None, overwrite: bool = False,
        progress: bool = False, **options) -> RunResult:
    """Run one federation. ``config`` is a ``RunConfig`` or a dict of its fields; keyword ``options`` (the same
    names) override it. ``transcript`` streams the server's view of every round to that directory (the input
    of the attacks); ``progress`` shows a bar per phase on stderr."""
    config = _config(config, options)
    completed = complete_run(config, progress=progress, transcript=None if transcript is None else str(transcript),
                             overwrite=overwrite)
    path = completed.document.get("transcript", {}).get("path")
    return RunResult(trained_model(completed), completed.document, None if path is None else Path(path))


def _config(config: RunConfig | Mapping | None, options: dict) -> RunConfig:
    known = {f.name for f in fields(RunConfig)}
    given = dict(config) if isinstance(config, Mapping) else {}
    unknown = sorted((set(given) | set(options)) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; RunConfig's fields are the CLI's options with "
                          "underscores (e.g. buffer_width)")
    if isinstance(config, RunConfig):
        return replace(config, **options)
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(f"config must be a RunConfig or a dict of its fields, got {type(config).__name__}")
    return RunConfig(**{**given, **options})
