"""Writes a run's dashboard: one self-contained HTML page, rendered by Jinja2 from the view model."""

from __future__ import annotations

import pathlib
from importlib import resources
from typing import Optional

import jinja2
from markupsafe import Markup

from config.settings import PipelineConfig
from report import history
from report.run_view import RunView, load_run, run_layout
from report.scores import NA, hint
from report.view_model import history_view, tint, view_model

DASHBOARD_FILE = "index.html"


def _static(name: str) -> Markup:
    return Markup(resources.files("report").joinpath("static", name).read_text(encoding="utf-8"))


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.globals.update(hint=hint, NA=NA)  # macros see globals, not the page context
_ENV.filters.update(
    f1="{:.1f}".format,
    f2="{:.2f}".format,
    f3="{:.3f}".format,
    f4="{:.4f}".format,
    f6="{:.6f}".format,
    g="{:g}".format,
    g3="{:.3g}".format,
    tint=tint,
)


def _assets():
    # Package files, inlined: the page's CSP allows no other source.
    return {"css": _static("dashboard.css"), "error_hook": _static("error_hook.js"), "sort_js": _static("sort.js")}


def render_html(view: RunView) -> str:
    """The whole page; every asset is inline so it opens from disk, a mail or a CI artifact."""
    return _ENV.get_template("dashboard.html.j2").render(view_model(view), **_assets())


def write_history_page(runs_dir: str, output: str) -> str:
    """Writes the run history of the run folders under a Kubeflow pipeline root (report.history.folder_history)
    as one self-contained page; returns its path."""
    rows = history.folder_history(runs_dir)
    page = _ENV.get_template("history_page.html.j2").render(
        history=history_view(rows), source=runs_dir, title=f"petseg runs · {len(rows)}", **_assets()
    )
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return str(path.resolve())


def write_dashboard(run_dir: str, output: Optional[str] = None, pipeline_name: str = PipelineConfig.name) -> str:
    """Writes the dashboard (default `<run>/report/index.html`) and returns its path."""
    view = load_run(run_dir, pipeline_name)
    report_dir = run_layout(view.run_dir, pipeline_name).report_dir
    path = pathlib.Path(output) if output else pathlib.Path(report_dir) / DASHBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(view), encoding="utf-8")
    return str(path.resolve())
