"""Start-up cost: `petseg run`'s modules must not pull in `tfx.v1` and its Google Cloud extensions."""

import subprocess
import sys


def test_run_path_does_not_import_tfx_v1():
    code = ("import sys; import pipeline.cli, pipeline.local_runner, report.summary, report.dashboard, "
            "trainer.run, components.segmentation_metrics; "
            "print(sorted(m for m in sys.modules if m == 'tfx.v1' or m.startswith('google.cloud.aiplatform')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
