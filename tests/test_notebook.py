"""notebooks/evaluation.ipynb's code cells, run in order against a real tiny run (RUN_DIR overridden)."""

import ast
import json
import pathlib

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "evaluation.ipynb"


def run_cells(run_dir: pathlib.Path) -> list:
    """Executes each code cell like Jupyter: a trailing expression is evaluated and its value kept."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    namespace, shown = {}, []
    for cell in cells:
        tree = ast.parse("".join(cell["source"]))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, NOTEBOOK.name, "exec"), namespace)
        if "parameters" in cell["metadata"].get("tags", []):
            namespace["RUN_DIR"] = str(run_dir)  # papermill-style: the test's run replaces the default
        if last is not None:
            shown.append(eval(compile(ast.Expression(last.value), NOTEBOOK.name, "eval"), namespace))
    return shown


def test_notebook_renders_tfma_widgets_and_tables(tiny_run):
    from tensorflow_model_analysis.notebook.visualization import SlicingMetricsViewer

    shown = run_cells(tiny_run)
    widgets = [s for s in shown if isinstance(s, SlicingMetricsViewer)]
    assert len(widgets) == 3  # overall, species, breed
    assert [d["slice"] for d in widgets[0].data] == ["Overall"]
    assert sorted(d["slice"] for d in widgets[1].data) == ["species:0", "species:1"]
    assert all(d["slice"].startswith("label:") for d in widgets[2].data) and widgets[2].data
    assert "mean_iou" in widgets[1].data[0]["metrics"][""][""]
    slices = next(s for s in shown if hasattr(s, "index") and "species:cat" in s.index)
    assert {"overall", "species:cat", "species:dog"} <= set(slices.index)
    assert shown[-1] == str(tiny_run / "report" / "index.html")  # the last cell rewrites the dashboard


def test_time_series_of_the_pushed_models_is_given_each_ones_blessing_evaluation(spans_scenario):
    from tensorflow_model_analysis.notebook.visualization import TimeSeriesViewer

    shown = run_cells(spans_scenario.output)
    [series] = [s for s in shown if isinstance(s, TimeSeriesViewer)]
    # One point per model pushed, oldest first: a run handed a model already served pushes no new version.
    pushing, versions = [], set()
    for run in spans_scenario.runs.values():
        version = run.summary["pushed_model"] and run.summary["pushed_model"].rsplit("/", 1)[-1]
        if version and version not in versions:
            versions.add(version)
            pushing.append(run.summary)
    assert len(series.data) == len(pushing) >= 3
    for point, summary in zip(series.data, pushing):
        assert point["metrics"][""][""]["mean_iou"]["doubleValue"] == summary["metrics"]["overall"]["mean_iou"]
        assert point["config"]["modelIdentifier"] == summary["model"] + "/Format-Serving"
    assert series.config == {"isModelCentric": True}
    history = next(s for s in shown if hasattr(s, "columns") and "drift" in s.columns)
    assert list(history["drift"]) == [run.summary["drift"]["verdict"] for run in spans_scenario.runs.values()]
