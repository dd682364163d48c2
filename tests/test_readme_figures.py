"""Every marked README figure equals what its benchmark results file says (issue 16, item 6)."""

import functools
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme_figures.py")
readme_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_figures)


def test_the_readme_figures_match_the_results_files():
    text = (ROOT / "README.md").read_text()
    assert len(readme_figures.FIGURE.findall(text)) >= 250  # every measured figure (issue 16, item 6)
    assert readme_figures.mismatches(text) == []


def test_a_stale_or_unknown_figure_is_reported_and_rewritten():
    line = "<!--fig masking_cost:default_job.mask.accuracy:.3f-->0.5<!--/fig-->"
    true = format(readme_figures.value_of("masking_cost", "default_job.mask.accuracy"), ".3f")
    assert readme_figures.mismatches(line) == [
        f"masking_cost:default_job.mask.accuracy reads '0.5', the results say {true!r}"]
    assert readme_figures.rewrite(line) == line.replace(">0.5<", f">{true}<")
    missing = "<!--fig masking_cost:default_job.nothing:.3f-->1<!--/fig-->"
    assert readme_figures.mismatches(missing) == ["masking_cost.json has no 'default_job.nothing' (stuck at 'nothing')"]


def _with_results(monkeypatch, tmp_path, name, document):
    (tmp_path / f"{name}.json").write_text(json.dumps(document))
    monkeypatch.setattr(readme_figures, "RESULTS", tmp_path)
    readme_figures._results.cache_clear()
    monkeypatch.setattr(readme_figures, "_results", functools.cache(readme_figures._results.__wrapped__))


def test_derived_figures_are_computed_from_the_results(monkeypatch, tmp_path):
    _with_results(monkeypatch, tmp_path, "bench", {
        "rows": [{"acc": 0.90, "s": 2.0}, {"acc": 0.93, "s": 0.5}, {"acc": 0.96, "s": 1.0}],
        "by_name": {"a": {"bytes": 3 * 1048576}, "b": {"bytes": 1048576}}, "floor 0.25": {"x": 7}})
    value = readme_figures.value_of
    assert value("bench", "mean(rows.*.acc)") == pytest.approx(0.93, abs=1e-15)
    assert value("bench", "min(rows.*.s)") == 0.5
    assert value("bench", "max(rows.*.acc)") == 0.96
    assert value("bench", "ratio(rows.0.s,rows.1.s)") == 4.0
    assert value("bench", "diff(rows.2.acc, rows.0.acc)") == pytest.approx(0.06, abs=1e-15)
    assert value("bench", "sum(by_name.*.bytes)") == 4 * 1048576
    assert value("bench", "ratio(by_name.a.bytes,1048576)") == 3.0
    assert value("bench", "product(rows.1.s,1e3)") == 500.0
    assert value("bench", "count(rows.*)") == 3
    assert value("bench", "ratio(diff(1,rows.2.acc),diff(1,rows.0.acc))") == pytest.approx(0.4, abs=1e-12)
    assert value("bench", "diff(max(rows.*.s),min(rows.*.s))") == 1.5
    assert value("bench", "floor 0\\.25.x") == 7
    line = "<!--fig bench:mean(rows.*.acc):.3f-->0.900<!--/fig--> and <!--fig bench:ratio(rows.0.s,rows.1.s):.1f-->4.0<!--/fig-->"
    assert readme_figures.mismatches(line) == ["bench:mean(rows.*.acc) reads '0.900', the results say '0.930'"]
    assert readme_figures.rewrite(line) == line.replace(">0.900<", ">0.930<")


def test_a_derived_figure_refuses_what_it_cannot_compute(monkeypatch, tmp_path):
    _with_results(monkeypatch, tmp_path, "bench", {"rows": [{"acc": 0.9}, {"s": 1.0}], "empty": [],
                                                    "auc": [0.6, None]})
    with pytest.raises(KeyError, match="names 2 values; wrap it"):
        readme_figures.value_of("bench", "rows.*")
    with pytest.raises(KeyError, match="has no 'rows.\\*.acc' \\(stuck at 'acc'\\)"):
        readme_figures.value_of("bench", "mean(rows.*.acc)")
    with pytest.raises(KeyError, match="has nothing at 'empty.\\*'"):
        readme_figures.value_of("bench", "max(empty.*)")
    with pytest.raises(KeyError, match="'max\\(auc.\\*\\)' takes NoneType 'None', not a number"):
        readme_figures.value_of("bench", "max(auc.*)")
    assert readme_figures.mismatches("<!--fig bench:median(rows.*.acc):.3f-->0.9<!--/fig-->") == [
        "bench.json has no 'median(rows.*.acc)' (stuck at 'median(rows')"]
