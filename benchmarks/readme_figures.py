"""The README's measured figures, filled in from benchmarks/results so they cannot drift from the measurements.

A figure in README.md is written as

    <!--fig FILE:PATH:FORMAT-->VALUE<!--/fig-->

FILE is a results file in benchmarks/results (without .json), PATH a dot-separated path into it
(list items by index), FORMAT a Python format spec (``.3f``, ``.1e``, ``,d``; a trailing ``%`` scales
by 100 as Python does). The markers are invisible when the README is rendered.

    python benchmarks/readme_figures.py           # rewrite every figure from the results
    python benchmarks/readme_figures.py --check   # exit 1 and list the figures that differ

``make bench`` ends with the first; the test suite runs the second, so a README figure that no
longer matches its results file fails CI.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
FIGURE = re.compile(r"<!--fig (?P<file>[\w\-]+):(?P<path>[^:>]+):(?P<format>[^>]*)-->(?P<value>.*?)<!--/fig-->")


@cache
def _results(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no results file {path.relative_to(ROOT)}")
    return json.loads(path.read_text())


def value_of(file: str, path: str):
    node = _results(file)
    for key in path.split("."):
        try:
            node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError):
            raise KeyError(f"{file}.json has no {path!r} (stuck at {key!r})") from None
    return node


def render(match: re.Match) -> str:
    return format(value_of(match["file"], match["path"]), match["format"])


def figures(text: str) -> list[tuple[re.Match, str]]:
    """Every figure in ``text`` with the value its results file gives (KeyError for a missing one)."""
    return [(match, render(match)) for match in FIGURE.finditer(text)]


def mismatches(text: str) -> list[str]:
    problems = []
    for match in FIGURE.finditer(text):
        try:
            expected = render(match)
        except KeyError as exc:
            problems.append(exc.args[0])
            continue
        if match["value"] != expected:
            problems.append(f"{match['file']}:{match['path']} reads {match['value']!r}, the results say {expected!r}")
    return problems


def rewrite(text: str) -> str:
    return FIGURE.sub(lambda m: f"<!--fig {m['file']}:{m['path']}:{m['format']}-->{render(m)}<!--/fig-->", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a figure differs")
    args = parser.parse_args()
    text = README.read_text()
    if args.check:
        problems = mismatches(text)
        for problem in problems:
            print(problem)
        print(f"{len(FIGURE.findall(text))} figures, {len(problems)} out of date")
        return 1 if problems else 0
    README.write_text(rewrite(text))
    print(f"{len(FIGURE.findall(text))} figures written from {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
