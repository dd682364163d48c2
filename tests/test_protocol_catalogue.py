"""The catalogue of active-server attacks (attacks/protocol/catalogue.py): the rows the privacy report states."""

import inspect
import json
import re
import typing

import pytest

from attacks.protocol import catalogue, he, masking
from attacks.protocol.outcome import Outcome
from protocols import errors


def drivers():
    """Every function of masking.py and he.py that returns an Outcome, found by its return annotation."""
    return {f"{module.__name__.rsplit('.', 1)[-1]}.{name}" for module in (masking, he)
            for name, f in inspect.getmembers(module, inspect.isfunction)
            if f.__module__ == module.__name__ and typing.get_type_hints(f).get("return") is Outcome}


def test_every_attack_driver_is_in_the_catalogue():
    found = drivers()
    assert {"masking.restricted_view", "masking.bound_oracle", "he.key_substitution", "he.small_round"} <= found
    assert "masking.honest_round" not in found  # it returns the sum, not an Outcome
    assert {case.name for case in catalogue.CASES} == found
    assert {1, 2, 3, 4, 5, 6} <= {finding(case) for case in catalogue.CASES}


def finding(case):
    """The issue-12 finding a driver's docstring names ("Finding 4: ..."), or None."""
    named = re.match(r"Finding (\d+)", case.driver.__doc__)
    return int(named.group(1)) if named else None


@pytest.mark.parametrize("case", catalogue.CASES, ids=lambda case: f"{case.name}[{case.variant}]")
def test_attack_leaks_exactly_without_its_defence_and_meets_typed_refusals_with_it(case):
    row = catalogue.outcome_row(case)
    assert json.loads(json.dumps(row)) == row  # JSON-ready: no arrays, tuples or numpy scalars
    assert row["attack"] == case.name and row["finding"] == finding(case)
    assert row["threat_model"] and row["parameters"]

    double = row["without_defence"]
    assert double["leaked"] and double["exact"], double
    assert double["lacks"] and double["runs"] != row["shipped"]["runs"]

    shipped = row["shipped"]
    assert not shipped["leaked"] and not shipped["exact"], shipped
    assert shipped["defence"] and shipped["example"]
    assert shipped["refused"] == sum(shipped["refusals"].values()) >= 1
    assert all(issubclass(getattr(errors, name), errors.ProtocolAbort) for name in shipped["refusals"])


def test_active_server_outcomes_returns_a_row_per_case_and_reports_progress(monkeypatch, capsys):
    cheap = [case for case in catalogue.CASES if case.name in ("masking.substituted_keys", "masking.split_model")]
    monkeypatch.setattr(catalogue, "CASES", tuple(cheap))
    rows = catalogue.active_server_outcomes(progress=True)
    assert [row["attack"] for row in rows] == ["masking.split_model", "masking.substituted_keys"]
    assert rows[0]["finding"] == 3 and rows[1]["finding"] is None
    assert rows[1]["shipped"]["refusals"] == {"AuthenticationError": 1}
    assert capsys.readouterr().err.splitlines() == ["[1/2] masking.split_model: n = 6, the others' update known (zero)",
                                                    "[2/2] masking.substituted_keys: n = 10"]
