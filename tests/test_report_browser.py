"""The report renders in a real browser: every figure draws its SVG and no JavaScript error occurs.

Headless Debian Chromium loads the page from disk with no network, after a small script is
injected at the top of <head> that records uncaught errors, unhandled rejections and
``console.error`` calls, and, once the page has loaded, writes them and the number of figures
that drew an SVG onto <body>; ``--dump-dom`` then hands the DOM back. Missing Chromium skips
locally but fails in CI (env CI set), where the set-up installs it.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from _analysis_fixtures import sweep, write_results

from kd_ray.report import write_report

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
_PROBE = """<script>
window.__kdErrors = [];
window.addEventListener('error', function (e) { window.__kdErrors.push('error: ' + (e.message || e)); });
window.addEventListener('unhandledrejection', function (e) { window.__kdErrors.push('rejection: ' + e.reason); });
(function () { var original = console.error; console.error = function () {
  window.__kdErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); }; })();
window.addEventListener('load', function () { setTimeout(function () {
  var figures = Array.from(document.querySelectorAll('.kd-figure'));
  var drawn = figures.filter(function (f) { return f.querySelector('.plotly-graph-div svg.main-svg'); });
  document.body.setAttribute('data-js-errors', JSON.stringify(window.__kdErrors));
  document.body.setAttribute('data-drawn', String(drawn.length));
  document.body.setAttribute('data-found', String(figures.length));
}, 1000); });
</script>"""


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI; the test set-up must install Debian's chromium package")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")


def _render(page: Path, tmp_path: Path) -> dict[str, str]:
    """Load ``page`` with the probe injected; return the attributes the probe set on <body>."""
    probed = page.with_name("probed-" + page.name)
    probed.write_text(
        page.read_text(encoding="utf-8").replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8"
    )
    profile = tmp_path / "chromium-profile"
    args = [
        str(_chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body, "chromium returned no <body>"
    return {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', body.group(1))}


def test_report_renders_every_figure_without_js_errors(tmp_path: Path) -> None:
    root = write_results(tmp_path / "demo", sweep(views=("full", "split")))
    page = write_report(root)
    attrs = _render(page, tmp_path)
    assert "data-js-errors" in attrs, "the page never finished loading"
    assert json.loads(attrs["data-js-errors"]) == []
    expected = int(attrs["data-figures"])
    assert expected >= 8
    assert int(attrs["data-found"]) == expected
    assert int(attrs["data-drawn"]) == expected


def test_probe_catches_a_javascript_error(tmp_path: Path) -> None:
    """The detector itself works: a page with a broken script is reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><script>notDefined();</script></body></html>")
    attrs = _render(page, tmp_path)
    errors = json.loads(attrs["data-js-errors"])
    assert any("notDefined" in e for e in errors)
