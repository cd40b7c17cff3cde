"""The HTML dashboard of a real tiny run, opened in headless Chromium: slices, verdict, charts, no network, no
errors."""

import html
import json
import math
import pathlib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from markupsafe import escape

from cli import main as cli
from config.profiles import load_config
from report import dashboard, scores
from report.run_view import RunView
from transform.features import CLASS_NAMES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian `chromium` not installed (`make test` installs it: apt-get install chromium)"
)
# Chromium's own services still call home despite --disable-background-networking; a page can't reach these.
BROWSER_HOSTS = re.compile(r"^https?://([\w.-]+\.)?(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)[/:]")


def chromium(profile_dir, url, *args):
    """Runs headless Chromium on `url`; returns (stdout, list of URLs it requested, console lines)."""
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile_dir}",
            "--enable-logging=stderr",
            "--v=1",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    requested = re.findall(r"NotifyBeforeURLRequest: (\S+)", proc.stderr)
    page_requests = [u for u in requested if not u.startswith(("file:", "data:")) and not BROWSER_HOSTS.match(u)]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return proc.stdout, page_requests, console


class ChartMarks(HTMLParser):
    """The marks of each SVG chart in a DOM: {chart title: [(tag, attributes), ...]}."""

    def __init__(self, dom: str):
        super().__init__()
        self.charts, self._chart = {}, None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self._chart = self.charts.setdefault(attrs["aria-label"], [])
        elif self._chart is not None and "data-value" in attrs:
            self._chart.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None


def keras_history(console: str) -> dict:
    """{metric: [value per epoch]} from the lines Keras prints to stdout after each `Epoch N/M` (4 decimals)."""
    history = {}
    for line in re.findall(r"^Epoch \d+/\d+\n(.*)$", console, re.MULTILINE):
        for name, value in re.findall(r"(\w+): (\d+\.\d+)", line):
            history.setdefault(name, []).append(float(value))
    return history


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory):
    """The dashboard `petseg report` writes for the tiny run, and Chromium's DOM of it sorted by mean IoU."""
    out = tmp_path_factory.mktemp("dashboard") / "dash.html"
    assert cli.main(["report", "--run", str(tiny_run), "--output-file", str(out)]) == 0
    dom, requests, console = chromium(
        tmp_path_factory.mktemp("chromium"), out.as_uri() + "#sort=mean_iou-desc", "--dump-dom"
    )
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
        src == "data:image/png;base64," for src in re.findall(r'<img src="([^"]{0,22})', text)
    )
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
    table = dom[dom.index('id="slices"') :]
    values = [
        float(v)
        for v in re.findall(
            r'<tr data-slice="[^"]+"[^>]*><th[^>]*>[^<]*</th>'
            r'<td data-v="[^"]*">[^<]*</td><td data-v="([^"]+)"',
            table,
        )
    ]
    assert len(values) == len(rows) and values == sorted(values, reverse=True)


@needs_chromium
def test_gated_metric_and_its_gate_are_shown(page, tiny_run):
    _, dom, _, _ = page
    summary = json.loads((tiny_run / "summary.json").read_text())
    gate = load_config("tiny").eval.min_mean_iou
    verdict = dom[dom.index('id="verdict"') : dom.index('class="cards"')]
    assert f"mean IoU ≥ {gate:g}" in html.unescape(verdict)
    shown = re.search(r'<div class="label">mean IoU</div><div class="big">([^<]+)<', dom).group(1)
    assert float(shown) == pytest.approx(summary["metrics"]["overall"]["mean_iou"], abs=5e-4)
    [(_, line)] = [m for m in ChartMarks(dom).charts["IoU per class"] if m[0] == "line"]
    assert "gate" in line["class"] and float(line["data-value"]) == gate


@needs_chromium
def test_bar_charts_plot_each_slices_scores_to_scale(page, tiny_run):
    _, dom, _, _ = page
    summary = json.loads((tiny_run / "summary.json").read_text())
    charts = ChartMarks(dom).charts
    groups = {
        "overall": summary["metrics"]["overall"],
        **{n: m for n, m in summary["metrics"]["slices"].items() if n.startswith("species:")},
    }
    for title, prefix in (("IoU per class", "iou"), ("Dice per class", "dice")):
        bars = [attrs for tag, attrs in charts[title] if tag in ("rect", "text")]
        plotted = {(b["data-series"], b["data-category"]): b for b in bars}
        assert len(plotted) == len(bars) == len(groups) * (len(CLASS_NAMES) + 1)
        for (series, category), bar in plotted.items():
            m = groups[series]
            expected = m[f"mean_{prefix}"] if category == "mean" else m[prefix][category]
            if expected is None:  # undefined (NaN, null in summary.json): a "—" mark, no bar
                assert bar["data-value"] == "" and "height" not in bar
            else:
                assert float(bar["data-value"]) == pytest.approx(expected, abs=1e-9), (title, series, category)
        # Bars are drawn to one scale: height / value is the same for every bar not clamped to the minimum.
        scale = [
            float(b["height"]) / float(b["data-value"])
            for b in bars
            if b["data-value"] and float(b["data-value"]) >= 0.05
        ]
        assert scale and max(scale) / min(scale) < 1.02, (title, scale)
        assert all(float(b["height"]) > 0 for b in bars if b.get("data-value") == "0.0"), "a 0 must stay visible"


@needs_chromium
def test_training_curves_plot_what_keras_printed(page, tiny_run):
    _, dom, _, _ = page
    printed = keras_history((tiny_run / "run.stdout").read_text())
    epochs = load_config("tiny").train.epochs
    assert printed and all(len(v) == epochs for v in printed.values()), printed
    charts = ChartMarks(dom).charts
    plotted = {}
    for metric in ("loss", "mean_iou"):
        points = [attrs for tag, attrs in charts[metric] if tag == "circle"]
        for p in points:
            plotted.setdefault(p["data-series"], []).append((int(p["data-epoch"]), float(p["data-value"])))
        # A higher value sits higher on the chart (smaller y).
        by_value = sorted(points, key=lambda p: float(p["data-value"]))
        assert [float(p["cy"]) for p in by_value] == sorted((float(p["cy"]) for p in points), reverse=True)
    for series in ("loss", "val_loss", "mean_iou", "val_mean_iou"):
        assert [e for e, _ in plotted[series]] == list(range(1, epochs + 1))
        assert [v for _, v in plotted[series]] == pytest.approx(printed[series], abs=5e-5), series


@needs_chromium
def test_screenshot_is_drawn(page, tmp_path):
    from PIL import Image

    out, *_ = page
    shot = tmp_path / "dashboard.png"
    chromium(tmp_path / "profile", out.as_uri(), f"--screenshot={shot}", "--window-size=1400,2400")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    # Painted, not blank: no colour fills most of the page, and text, charts and mask images add thousands.
    colours = image.getcolors(maxcolors=1 << 24)
    assert max(n for n, _ in colours) < 0.9 * image.size[0] * image.size[1]
    assert len(colours) > 1000, len(colours)


@needs_chromium
def test_error_and_request_detection_work(tmp_path):
    """Negative control: the checks above do see a console error, an exception and a request."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><script>console.error("boom")</script>'
        '<img src="http://petseg.invalid/x.png"><script>notDefined()</script>'
    )
    _, requests, console = chromium(tmp_path / "profile", bad.as_uri(), "--dump-dom")
    assert requests == ["http://petseg.invalid/x.png"]
    assert any("boom" in line for line in console) and any("Uncaught" in line for line in console)


@needs_chromium
def test_page_error_hook_reports_a_script_error(page, tmp_path):
    """Negative control: the dashboard's own hook records an error, so its absence above means something."""
    out, *_ = page
    broken = tmp_path / "broken.html"
    broken.write_text(out.read_text().replace("</body>", "<script>notDefined()</script></body>"))
    dom, _, _ = chromium(tmp_path / "profile", broken.as_uri(), "--dump-dom")
    errors = re.search(r'<html[^>]*data-errors="([^"]*)"', dom)
    assert errors and "notDefined" in html.unescape(errors.group(1))
    assert re.search(r'<div id="page-errors">[^<]*notDefined', dom), "the error is shown on the page too"


def test_undefined_scores_refusal_and_gaps_in_history_are_explained():
    nan = math.nan
    overall = {
        "mean_iou": 0.41,
        "mean_dice": 0.5,
        "pixel_accuracy": 0.8,
        "pixels": 10,
        "examples": 2,
        "iou": {"pet": 0.6, "background": 0.22, "border": nan},
        "dice": {"pet": 0.7, "background": 0.3, "border": nan},
    }
    view = RunView(
        run_dir="/runs/x",
        summary={"profile": "tiny", "pushed_model": None, "components": {}},
        evaluation_uri=None,
        metrics={"overall": overall, "slices": {"species:cat": dict(overall, mean_iou=nan)}},
        baseline={"overall": dict(overall, mean_iou=0.5), "slices": {}},
        blessed=False,
        thresholds={"min_mean_iou": 0.5, "max_regression": 0.01},
        failures=["mean_iou: 0.41 is below the lower bound 0.5"],
        history={"loss": [0.9, nan, 0.5], "val_loss": [1.0, 0.8, 0.7]},
        images=[],
    )
    page = dashboard.render_html(view)
    assert 'data-blessed="false"' in page and "NOT BLESSED" in page and "not pushed" in page
    assert html.escape("mean_iou: 0.41 is below the lower bound 0.5") in page
    assert "mean IoU ≥ 0.5" in page and "no more than 0.01 below the baseline" in page
    assert f'title="{escape(scores.ABSENT_CLASS_HINT)}">{scores.NA}' in page
    assert f'title="{escape(scores.NO_PIXELS_HINT)}">{scores.NA}' in page
    assert "-0.090 vs baseline" in page  # the headline shows the regression
    assert 'id="quality-warning"' not in page  # an undefined class is not a poor one
    # An undefined class gets a "—" mark in the bar chart instead of a bar.
    border = [(tag, a) for tag, a in ChartMarks(page).charts["IoU per class"] if a.get("data-category") == "border"]
    assert border and all(tag == "text" and a["data-value"] == "" for tag, a in border)
    # A NaN epoch (diverged) is left out, and the epochs after it keep their own numbers and values.
    loss = [a for tag, a in ChartMarks(page).charts["loss"] if tag == "circle" and a["data-series"] == "loss"]
    assert [(a["data-epoch"], float(a["data-value"])) for a in loss] == [("1", 0.9), ("3", 0.5)]
    assert "loss epoch 3: 0.5000" in page

    overall["iou"]["background"] = 0.05
    assert re.search(r'id="quality-warning"[^>]*>⚠ background: IoU below 0.1', dashboard.render_html(view))


# ---------------------------------------------------------------- drift and history, over weeks of spans


@pytest.fixture(scope="module")
def drift_pages(spans_scenario, tmp_path_factory):
    """Chromium's DOM of the dashboards of the run stopped by drift and of the last run, with requests and console."""
    profile = tmp_path_factory.mktemp("chromium-drift")
    return {
        name: chromium(profile, spans_scenario.runs[name].dashboard.as_uri(), "--dump-dom")
        for name in ("span3_stop", "window_again")
    }


def _rows(dom, table_id):
    """The <tr> start tags of a table's body, as attribute dicts, with their cells' text and data-v."""
    body = dom[dom.index(f'id="{table_id}"') :]
    body = body[body.index("<tbody>") : body.index("</tbody>")]
    rows = []
    for attributes, cells in re.findall(r"<tr ([^>]*)>(.*?)</tr>", body, re.S):
        row = dict(re.findall(r'([\w-]+)="([^"]*)"', attributes))
        row["cells"] = [
            html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", cells)
        ]
        row["values"] = re.findall(r'<td data-v="([^"]*)"', cells)
        rows.append(row)
    return rows


def _clean(dom, requests, console):
    assert 'data-ready="1"' in dom, "the page's script did not finish"
    errors = re.search(r'<html[^>]*data-errors="([^"]*)"', dom)
    assert errors is None, html.unescape(errors.group(1))
    assert requests == [] and console == []


@needs_chromium
def test_a_run_stopped_by_drift_shows_why_values_against_thresholds(drift_pages, spans_scenario):
    dom, requests, console = drift_pages["span3_stop"]
    _clean(dom, requests, console)
    summary = spans_scenario.runs["span3_stop"].summary
    assert re.search(r'id="verdict" class="verdict bad" data-blessed="false" data-stopped="DriftGate"', dom)
    assert "STOPPED: DATA DRIFT" in dom and "--set drift.action=warn" in dom
    # No model section borrowed from an earlier run.
    assert 'id="slices"' not in dom and 'id="comparison"' not in dom and 'id="no-model"' in dom
    assert re.search(r'id="drift-verdict" data-verdict="drifted"', dom)
    shown = _rows(dom, "drift")
    assert len(shown) == len(summary["drift"]["features"])
    for row, expected in zip(shown, summary["drift"]["features"]):
        assert (row["data-feature"], row["data-comparator"]) == (expected["feature"], expected["comparator"])
        assert float(row["values"][0]) == pytest.approx(expected["value"], abs=1e-9)
        assert float(row["values"][1]) == pytest.approx(expected["threshold"])
        assert row["data-drifted"] == ("true" if expected["drifted"] else "false")
        assert ("drifted" in row.get("class", "")) == expected["drifted"]
        assert row["cells"][-1] == ("✘ drifted" if expected["drifted"] else "✔")
    assert {r["data-feature"] for r in shown if r["data-drifted"] == "true"} >= {"species"}


@needs_chromium
def test_history_lists_every_run_oldest_first_and_charts_mean_iou(drift_pages, spans_scenario):
    dom, requests, console = drift_pages["window_again"]
    _clean(dom, requests, console)
    runs = list(spans_scenario.runs.values())
    shown = _rows(dom, "history")
    assert len(shown) == len(runs)
    for index, (row, run) in enumerate(zip(shown, runs), 1):
        summary = run.summary
        assert row["cells"][0] == str(index)
        assert row["cells"][2] == ", ".join(str(s["span"]) for s in summary["dataset"]["spans"])
        assert row["data-drift"] == summary["drift"]["verdict"]
        assert row["data-status"] == ("stopped by drift" if run.returncode else "completed")
        candidate, baseline = row["values"][:2]
        if summary["metrics"]:
            assert float(candidate) == pytest.approx(summary["metrics"]["overall"]["mean_iou"], abs=1e-9)
        else:
            assert candidate == ""
        if summary["baseline"]:
            assert float(baseline) == pytest.approx(summary["baseline"]["mean_iou"], abs=1e-9)
        pushed = summary["pushed_model"] and pathlib.Path(summary["pushed_model"]).name
        assert row["cells"][7] == (pushed or scores.NA)
    points = [a for tag, a in ChartMarks(dom).charts["mean IoU over runs"] if tag == "circle"]
    candidate = {int(p["data-epoch"]): float(p["data-value"]) for p in points if p["data-series"] == "candidate"}
    assert candidate == pytest.approx(
        {i: r.summary["metrics"]["overall"]["mean_iou"] for i, r in enumerate(runs, 1) if r.summary["metrics"]}
    )
    assert "run (1–" in dom


@needs_chromium
def test_drift_and_history_screenshots_are_drawn(spans_scenario, tmp_path):
    from PIL import Image

    for name in ("span3_stop", "window_again"):
        shot = tmp_path / f"{name}.png"
        chromium(
            tmp_path / "profile",
            spans_scenario.runs[name].dashboard.as_uri(),
            f"--screenshot={shot}",
            "--window-size=1400,2400",
        )
        colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 24)
        assert max(n for n, _ in colours) < 0.9 * 1400 * 2400 and len(colours) > 300, (name, len(colours))
