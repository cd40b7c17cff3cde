"""The HTML dashboard of a real tiny run, opened in headless Chromium: slices, verdict, no network, no errors."""

import html
import json
import math
import re
import shutil
import subprocess

import pytest
from markupsafe import escape

from cli import main as cli
from report import dashboard, scores
from report.run_view import RunView

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian `chromium` not installed (`make test` installs it: apt-get install chromium)")
# Chromium's own services still call home despite --disable-background-networking; a page can't reach these.
BROWSER_HOSTS = re.compile(r"^https?://([\w.-]+\.)?(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)[/:]")


def chromium(profile_dir, url, *args):
    """Runs headless Chromium on `url`; returns (stdout, list of URLs it requested, console lines)."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile_dir}",
         "--enable-logging=stderr", "--v=1", *args, url],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    requested = re.findall(r"NotifyBeforeURLRequest: (\S+)", proc.stderr)
    page_requests = [u for u in requested if not u.startswith(("file:", "data:")) and not BROWSER_HOSTS.match(u)]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return proc.stdout, page_requests, console


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory):
    """The dashboard `petseg report` writes for the tiny run, and Chromium's DOM of it sorted by mean IoU."""
    out = tmp_path_factory.mktemp("dashboard") / "dash.html"
    assert cli.main(["report", "--run", str(tiny_run), "--output", str(out)]) == 0
    dom, requests, console = chromium(tmp_path_factory.mktemp("chromium"), out.as_uri() + "#sort=mean_iou-desc",
                                      "--dump-dom")
    return out, dom, requests, console


def test_petseg_run_writes_and_prints_the_dashboard(tiny_run):
    index = tiny_run / "report" / "index.html"
    assert index.exists()
    assert f"[petseg] dashboard: {index}" in (tiny_run / "run.stderr").read_text()


def test_page_is_self_contained(page):
    out, *_ = page
    text = out.read_text()
    assert "://" not in text  # no http(s):// or file:// reference of any kind
    assert re.findall(r'<img src="([^"]{0,22})', text) and all(
        src == "data:image/png;base64," for src in re.findall(r'<img src="([^"]{0,22})', text))
    assert "default-src 'none'" in text  # the page's CSP would block and report any request


@needs_chromium
def test_rendered_page_has_slices_verdict_and_no_errors_or_requests(page, tiny_run):
    _, dom, requests, console = page
    assert 'data-ready="1"' in dom, "the page's script did not finish"
    errors = re.search(r'<html[^>]*data-errors="([^"]*)"', dom)  # set by the page's error hook
    assert errors is None, html.unescape(errors.group(1))
    assert requests == [] and console == []
    rows = re.findall(r'<tr data-slice="([^"]+)"', dom)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert {"overall", "species:cat", "species:dog"} <= set(rows)
    assert set(rows) == {"overall", *summary["metrics"]["slices"]}
    assert any(r.startswith("label:") for r in rows)
    assert re.search(r'id="verdict"[^>]*data-blessed="true"', dom) and "BLESSED" in dom
    # `#sort=mean_iou-desc` sorted the table in the browser: mean IoU column descending.
    table = dom[dom.index('id="slices"'):]
    values = [float(v) for v in re.findall(r'<tr data-slice="[^"]+"[^>]*><th[^>]*>[^<]*</th>'
                                           r'<td data-v="[^"]*">[^<]*</td><td data-v="([^"]+)"', table)]
    assert len(values) == len(rows) and values == sorted(values, reverse=True)


@needs_chromium
def test_screenshot_is_drawn(page, tmp_path):
    from PIL import Image

    out, *_ = page
    shot = tmp_path / "dashboard.png"
    chromium(tmp_path / "profile", out.as_uri(), f"--screenshot={shot}", "--window-size=1400,2400")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    # The verdict banner (green when blessed) is painted near the top left.
    colours = {image.getpixel((x, y)) for x in range(60, 400, 20) for y in range(100, 220, 10)}
    assert (46, 125, 79) in colours


@needs_chromium
def test_error_and_request_detection_work(tmp_path):
    """Negative control: the checks above do see a console error, an exception and a request."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><script>console.error("boom")</script>'
                   '<img src="http://petseg.invalid/x.png"><script>notDefined()</script>')
    _, requests, console = chromium(tmp_path / "profile", bad.as_uri(), "--dump-dom")
    assert requests == ["http://petseg.invalid/x.png"]
    assert any("boom" in line for line in console) and any("Uncaught" in line for line in console)


def test_undefined_scores_and_refusal_are_explained():
    nan = math.nan
    overall = {"mean_iou": 0.41, "mean_dice": 0.5, "pixel_accuracy": 0.8, "pixels": 10, "examples": 2,
               "iou": {"pet": 0.6, "background": 0.22, "border": nan},
               "dice": {"pet": 0.7, "background": 0.3, "border": nan}}
    view = RunView(
        run_dir="/runs/x", summary={"profile": "tiny", "pushed_model": None, "components": {}},
        evaluation_uri=None, metrics={"overall": overall, "slices": {"species:cat": dict(overall, mean_iou=nan)}},
        baseline={"overall": dict(overall, mean_iou=0.5), "slices": {}}, blessed=False,
        thresholds={"min_mean_iou": 0.5, "max_regression": 0.01},
        failures=["mean_iou: 0.41 is below the lower bound 0.5"], history={}, images=[])
    page = dashboard.render_html(view)
    assert 'data-blessed="false"' in page and "NOT BLESSED" in page and "not pushed" in page
    assert html.escape("mean_iou: 0.41 is below the lower bound 0.5") in page
    assert "mean IoU ≥ 0.5" in page and "no more than 0.01 below the baseline" in page
    assert f'title="{escape(scores.ABSENT_CLASS_HINT)}">{scores.NA}' in page
    assert f'title="{escape(scores.NO_PIXELS_HINT)}">{scores.NA}' in page
    assert "-0.090 vs baseline" in page  # the headline shows the regression
    assert 'id="quality-warning"' not in page  # an undefined class is not a poor one

    overall["iou"]["background"] = 0.05
    assert re.search(r'id="quality-warning"[^>]*>⚠ background: IoU below 0.1', dashboard.render_html(view))
