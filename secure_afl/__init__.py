"""Analytic federated learning whose clients only ever contribute sums of sufficient statistics.

The one data path: images → backbone features (cached) → public feature map → per-client
statistics (float64) → a protocol round that returns only their sum → the server's Cholesky
solve → evaluation and a results document. See README.md for the command line.

From Python: ``secure_afl.run(config)`` returns a ``RunResult`` (the trained ``Model``, the results
document, the transcript's path); ``secure_afl.Model.load(path)`` reads a saved model (secure_afl/api.py).
"""

__version__ = "0.1.0"
__all__ = ["Model", "RunConfig", "RunResult", "run"]

_EXPORTS = {"run": "secure_afl.api", "RunResult": "secure_afl.api", "Model": "secure_afl.model",
            "RunConfig": "secure_afl.config"}


def __getattr__(name: str):
    """Imported on first use: ``import secure_afl.cli`` need not load torch and the runner first."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'secure_afl' has no attribute {name!r}")
