"""Times the default DeepAFL job (``secure-afl run --algorithm deepafl``: mnist5k, 20 clients, masking, T = 9)
and checks that its results did not move: -> benchmarks/results/deepafl_speed.json and .png.

"after" is measured here, with and without the centralized reference (``--no-centralized-reference``);
"before" is the figure measured on the code this change replaced (see BEFORE's note). Timings on a shared
2-core CPU vary with the load, which is recorded beside them.

    python benchmarks/deepafl_speed.py
"""

from __future__ import annotations

import json
import os
import resource
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from secure_afl.config import RunConfig
from secure_afl.results import environment, write_results
from secure_afl.runner import run

RESULTS = Path(__file__).parent / "results"
PHASES = ("features", "local", "aggregation", "solve", "evaluation")
BEFORE = {
    "code": "main at 275658a (before this change), `secure-afl run --algorithm deepafl --out ... --quiet`",
    "note": "measured once at the start of this work, on the same 2-core CPU while other jobs ran (load average 8-12); this tree no longer has that code path, so the figure is recorded here rather than re-measured. The run extracted the features (no cache), hence the features phase.",
    "device": "cpu (AMD EPYC, 2 cores, 2 threads)",
    "cpu_s_including_feature_extraction": 518.5,
    "timings_s": {
        "features": 103.6,
        "feature_map": 0.0,
        "local": 127.6,
        "aggregation": 98.7,
        "solve": 373.1,
        "evaluation": 1323.4,
        "total": 2026.5
    },
    "metrics": {
        "accuracy": 0.941,
        "train_accuracy": 0.997,
        "centralized_accuracy": 0.941,
        "max_rel_diff_to_centralized": 5.402037514855087e-12,
        "personalized_accuracy": 0.9446161077287497,
        "layer_accuracy": [
            0.931,
            0.937,
            0.94,
            0.942,
            0.945,
            0.941,
            0.944,
            0.944,
            0.942,
            0.941
        ],
        "layer_train_accuracy": [
            0.966,
            0.97975,
            0.9865,
            0.99025,
            0.99275,
            0.9935,
            0.9945,
            0.996,
            0.99675,
            0.997
        ],
        "per_client_accuracy": [
            0.9545454545454546,
            0.959349593495935,
            0.8823529411764706,
            0.9636363636363636,
            0.9807692307692307,
            0.92,
            0.9069767441860465,
            1.0,
            0.9090909090909091,
            0.9117647058823529,
            0.9375,
            0.9345794392523364,
            0.9148936170212766,
            1.0,
            0.8979591836734694,
            0.9607843137254902,
            1.0,
            0.9692307692307692,
            0.8888888888888888,
            1.0
        ]
    }
}


def measure(config: RunConfig) -> dict:
    """Wall seconds per phase, and the CPU seconds the process used (all its threads): on a shared machine the
    wall clock also counts the other jobs' turns, the CPU time much less."""
    load = os.getloadavg()[0]
    start = resource.getrusage(resource.RUSAGE_SELF)
    document = run(config)
    end = resource.getrusage(resource.RUSAGE_SELF)
    timings = document["timings_s"]
    return {"timings_s": {k: round(v, 2) for k, v in timings.items()},
            "without_features_s": round(timings["total"] - timings.get("features", 0.0), 2),
            "cpu_s": round(end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime, 1),
            "cache_hits": document["features"]["cache_hits"], "load_average_1min_at_start": load,
            "load_average_1min_at_end": os.getloadavg()[0], "metrics": document["metrics"]}


def unchanged(before: dict, after: dict) -> dict:
    """Every accuracy exactly as before; the gap to centralized within 1e-9 relative of the model's scale."""
    exact = [k for k in ("accuracy", "train_accuracy", "centralized_accuracy", "personalized_accuracy",
                         "layer_accuracy", "layer_train_accuracy", "per_client_accuracy") if before[k] == after[k]]
    return {"identical_metrics": exact, "all_identical": len(exact) == 7,
            "max_rel_diff_to_centralized": after["max_rel_diff_to_centralized"]}


def main() -> None:
    config = RunConfig(algorithm="deepafl")
    run(replace(config, depth=0, centralized_reference=False))  # fills the feature cache: time the job, not extraction
    after = measure(config)
    skipped = measure(replace(config, centralized_reference=False))
    document = {
        "job": "secure-afl run --algorithm deepafl (mnist5k, 20 clients, dirichlet 0.1, mask, T = 9, d_F = 1024)",
        "before": BEFORE,
        "after": after,
        "after_no_centralized_reference": skipped,
        "check": unchanged(BEFORE["metrics"], after["metrics"]),
        "speedup_without_features": round((BEFORE["timings_s"]["total"] - BEFORE["timings_s"]["features"])
                                          / after["without_features_s"], 1),
        "cpu_note": "before's CPU seconds include the feature extraction (user + sys of the whole command); after's "
                    "read the features from the cache",
        "environment": environment(__import__("torch").device("cpu"), config.seed),
    }
    for entry in (after, skipped):
        entry["metrics"] = {k: entry["metrics"][k] for k in BEFORE["metrics"]}
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "deepafl_speed.json", document, overwrite=True)
    figure, ax = plt.subplots(figsize=(8, 4))
    runs = {"before": BEFORE["timings_s"], "after": after["timings_s"], "after, no reference": skipped["timings_s"]}
    bottom = [0.0] * len(runs)
    for phase in PHASES:
        values = [timings.get(phase, 0.0) for timings in runs.values()]
        ax.bar(list(runs), values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylabel="seconds (2-core CPU, shared)", title="default DeepAFL job, by phase")
    ax.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "deepafl_speed.png", dpi=120)
    print(json.dumps({k: document[k] for k in ("check", "speedup_without_features")}, indent=2))
    print("after:", after["timings_s"], "\nno reference:", skipped["timings_s"])


if __name__ == "__main__":
    main()
