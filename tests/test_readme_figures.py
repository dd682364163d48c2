"""Every marked README figure equals what its benchmark results file says (issue 16, item 6)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme_figures.py")
readme_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_figures)


def test_the_readme_figures_match_the_results_files():
    text = (ROOT / "README.md").read_text()
    assert len(readme_figures.FIGURE.findall(text)) >= 20
    assert readme_figures.mismatches(text) == []


def test_a_stale_or_unknown_figure_is_reported_and_rewritten():
    line = "<!--fig masking_cost:default_job.mask.accuracy:.3f-->0.5<!--/fig-->"
    true = format(readme_figures.value_of("masking_cost", "default_job.mask.accuracy"), ".3f")
    assert readme_figures.mismatches(line) == [
        f"masking_cost:default_job.mask.accuracy reads '0.5', the results say {true!r}"]
    assert readme_figures.rewrite(line) == line.replace(">0.5<", f">{true}<")
    missing = "<!--fig masking_cost:default_job.nothing:.3f-->1<!--/fig-->"
    assert readme_figures.mismatches(missing) == ["masking_cost.json has no 'default_job.nothing' (stuck at 'nothing')"]
