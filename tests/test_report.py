"""``write_report``: a self-contained offline page, claims first, a reason for every missing section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _analysis_fixtures import sweep, trial_row, write_results
from plotly.offline import get_plotlyjs

from kd_ray.errors import ResultsError
from kd_ray.report import write_report


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo's shape: digits, 2 teachers, 8 perms × {kd, zscore_kd}, full view, 1 seed, plus one failure."""
    rows = sweep() + [trial_row(perm="T1w_T2w_Sw", seed=7, status="failed")]
    root = write_results(tmp_path_factory.mktemp("results") / "demo", rows)
    path = write_report(root)
    return path, path.read_text(encoding="utf-8")


def test_default_path_and_plotlyjs_embedded_once(demo_page: tuple[Path, str]) -> None:
    path, page = demo_page
    assert path.name == "report.html" and path.parent.name == "demo"
    assert page.count(get_plotlyjs()[:500]) == 1
    assert not re.search(r"<script[^>]+src=", page), "the report must not load scripts from anywhere"


def test_claims_table_comes_first(demo_page: tuple[Path, str]) -> None:
    _, page = demo_page
    assert page.index('id="claims"') < page.index('class="kd-figure"')
    for claim in (f"C{i}" for i in range(1, 8)):
        assert f'<td class="text">{claim}</td>' in page
    assert "verdict-supported" in page


def test_method_says_each_kd_value_is_its_own_condition(demo_page: tuple[Path, str]) -> None:
    _, page = demo_page
    method = page[page.index("<h2>Claims check</h2>") : page.index('id="claims"')]
    assert "each value is its own condition" in method
    assert "paired claims are tested within each value" in method


def test_sections_with_data_and_reasons_for_the_rest(demo_page: tuple[Path, str]) -> None:
    _, page = demo_page
    drawn = set(re.findall(r'data-figure="([^"]+)"', page))
    assert drawn == {"fig1", "fig2", "figD6", "fig3", "figB5", "fig4", "figH9top", "figH9bottom", "curves"}
    missing = dict(re.findall(r'data-missing="([^"]+)">Not shown: ([^<]+)<', page))
    assert set(missing) == {"tableC", "eq9", "figE7", "figF8"}
    assert (
        "split-view" in missing["tableC"] and "ViT" in missing["figE7"] and "3 teachers" in missing["figF8"]
    )
    assert 'id="table-table1"' in page and 'id="table-tableH6"' in page and 'id="table-tableG5"' in page
    assert "Failed trials" in page and "boom" in page
    assert f'data-figures="{len(drawn)}"' in page


def test_custom_output_and_errors(tmp_path: Path) -> None:
    root = write_results(tmp_path / "small", sweep(losses=("kd",)))
    out = write_report(root, tmp_path / "out.html")
    assert out == tmp_path / "out.html" and out.stat().st_size > 1_000_000
    assert not list(tmp_path.glob(".out.html.*"))  # the temporary file was renamed away
    with pytest.raises(ResultsError, match="not found"):
        write_report(tmp_path / "missing")
    with pytest.raises(ResultsError, match="does not exist"):
        write_report(root, tmp_path / "no" / "dir" / "r.html")
