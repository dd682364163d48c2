"""benchmarks/results/privacy_report.md from benchmarks/results/privacy_grid.json (the same as
``secure-afl report``): the papers' privacy claims, one by one, against the grid's measurements.

    python benchmarks/privacy_report.py
"""

from __future__ import annotations

from pathlib import Path

from attacks.report import load_grid, write_report

RESULTS = Path(__file__).parent / "results"

if __name__ == "__main__":
    for path in write_report(load_grid(RESULTS / "privacy_grid.json"), RESULTS / "privacy_report.md"):
        print(f"written {path}")
