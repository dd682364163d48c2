"""The README's measured figures, filled in from benchmarks/results so they cannot drift from the measurements.

A figure in README.md is written as

    <!--fig FILE:PATH:FORMAT-->VALUE<!--/fig-->

FILE is a results file in benchmarks/results (without .json), PATH a dot-separated path into it
(list items by index; a dot inside a key is written ``\\.``), FORMAT a Python format spec (``.3f``,
``.1e``, ``,d``; a trailing ``%`` scales by 100 as Python does). The markers are invisible when the
README is rendered.

A figure that is a simple function of measured values has PATH ``OP(ARG,ARG,...)``: OP is ``sum``,
``diff`` (the first minus the rest), ``product``, ``ratio`` (the first over the rest), ``mean``,
``min``, ``max`` or ``count`` (how many values); each ARG is a path into the same file, a number or
another ``OP(...)``. A ``*`` step stands for every item of a list (every value of a mapping). So
``ratio(x,1048576)`` gives bytes as MiB, ``product(x,1000)`` seconds as milliseconds,
``mean(rows.*.accuracy)`` the mean over the rows and
``ratio(diff(1,a),diff(1,b))`` a ratio of error rates.

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
from math import prod
from pathlib import Path
from statistics import fmean

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
FIGURE = re.compile(r"<!--fig (?P<file>[\w\-]+):(?P<path>[^:>]+):(?P<format>[^>]*)-->(?P<value>.*?)<!--/fig-->")
DERIVED = re.compile(r"(?P<op>sum|diff|product|ratio|mean|min|max|count)\((?P<args>.*)\)")
KEY_SEPARATOR = re.compile(r"(?<!\\)\.")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
OPERATIONS = {
    "sum": sum,
    "diff": lambda xs: xs[0] - sum(xs[1:]),
    "product": prod,
    "ratio": lambda xs: xs[0] / prod(xs[1:]),
    "mean": fmean,
    "min": min,
    "max": max,
    "count": len,
}


@cache
def _results(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no results file {path.relative_to(ROOT)}")
    return json.loads(path.read_text())


def _values_at(file: str, path: str) -> list:
    """Every value ``path`` names in ``file`` (one, unless a step is ``*``)."""
    nodes = [_results(file)]
    for key in KEY_SEPARATOR.split(path):
        key = key.replace("\\.", ".")
        try:
            if key == "*":
                nodes = [item for node in nodes for item in (node if isinstance(node, list) else node.values())]
            else:
                nodes = [node[int(key)] if isinstance(node, list) else node[key] for node in nodes]
        except (KeyError, IndexError, ValueError, AttributeError):
            raise KeyError(f"{file}.json has no {path!r} (stuck at {key!r})") from None
    if not nodes:
        raise KeyError(f"{file}.json has nothing at {path!r}")
    return nodes


def _arguments(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def _operands(file: str, arg: str) -> list:
    if NUMBER.fullmatch(arg):
        return [float(arg)]
    return [value_of(file, arg)] if DERIVED.fullmatch(arg) else _values_at(file, arg)


def value_of(file: str, path: str):
    """The value at ``path``, or the derived value ``OP(ARG,...)`` of the values its arguments name."""
    derived = DERIVED.fullmatch(path)
    if derived is None:
        values = _values_at(file, path)
        if len(values) != 1:
            raise KeyError(f"{file}.json: {path!r} names {len(values)} values; wrap it in mean/min/max/sum")
        return values[0]
    operands = [x for arg in _arguments(derived["args"]) for x in _operands(file, arg)]
    for x in operands if derived["op"] != "count" else ():
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise KeyError(f"{file}.json: {path!r} takes {type(x).__name__} {str(x)[:40]!r}, not a number")
    return OPERATIONS[derived["op"]](operands)


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
