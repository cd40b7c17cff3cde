"""Transform and Evaluator img/s on a local Flink cluster (parallelism 2) vs DirectRunner in this process."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Dict, List, Optional

from config import names
from bench import stages
from engine import flink
from engine.beam_args import beam_pipeline_args
from config.settings import PipelineConfig
from config.profiles import apply_values
from report.artifacts import RunArtifacts


def local_cluster(work: str) -> flink.ClusterSpec:
    """A cluster of our own on ports its processes pick, so a developer's `petseg flink up` is left alone."""
    return flink.ClusterSpec(state_dir=os.path.join(work, "flink"), **dict.fromkeys(flink.PORT_FIELDS, 0))


def flink_args(config: PipelineConfig, spec: flink.ClusterSpec, parallelism: int) -> List[str]:
    import copy

    flink_config = apply_values(
        copy.deepcopy(config),
        {
            "beam.runner": "flink",
            "beam.job_endpoint": spec.job_endpoint,
            "beam.environment_config": spec.worker_pool,
            "beam.parallelism": parallelism,
        },
    )
    return beam_pipeline_args(flink_config.validate().beam)


def _line(once: float, many: float, count: int, copies: int) -> Dict[str, Optional[float]]:
    """Whole-run img/s, and the per-image cost and fixed start-up a straight line through both sizes gives."""
    marginal = stages._marginal(once, many, (copies - 1) * count)
    return {
        "seconds_x1": round(once, 1),
        f"seconds_x{copies}": round(many, 1),
        "images_per_second_x1": round(count / once, 2),
        f"images_per_second_x{copies}": round(copies * count / many, 2),
        "marginal_images_per_second": marginal and round(1 / marginal, 2),
        "fixed_seconds": marginal and round(once - count * marginal, 1),
    }


def _crossover(direct: Dict[str, Optional[float]], on_flink: Dict[str, Optional[float]]) -> Optional[int]:
    """Images from which Flink's run is shorter: fixed_f + n/rate_f < fixed_d + n/rate_d."""
    rates = direct["marginal_images_per_second"], on_flink["marginal_images_per_second"]
    if not all(rates) or rates[1] <= rates[0]:
        return None
    per_image_saving = 1 / rates[0] - 1 / rates[1]
    return max(0, round((on_flink["fixed_seconds"] - direct["fixed_seconds"]) / per_image_saving))


def engine_figures(
    config: PipelineConfig, run: RunArtifacts, work: str, spec: flink.ClusterSpec, parallelism: int = 2, copies: int = 2
) -> Dict[str, object]:
    """Both executors on both engines, on the run's data and on `copies` copies of it, in one process."""
    by_id, direct = stages.components(config)
    on_flink = flink_args(config, spec, parallelism)
    examples, schema = run.get(names.EXAMPLE_GEN_ID, "examples"), run.get(names.SCHEMA_GEN_ID, "schema")
    model = run.get(names.TRAINER_ID, "model")
    many_all = stages._copies(examples, ("train", "eval"), copies, work)
    many_eval = stages._copies(examples, ("eval",), copies, work)
    count_all = sum(1 for _ in stages._records(stages.record_files(examples.uri)))
    count_eval = sum(1 for _ in stages._records(stages.record_files(examples.uri, ("eval",))))
    results: Dict[str, object] = {"engines_parallelism": parallelism, "engines_flink_args": on_flink}
    for name, component, count, inputs in (
        ("transform", names.TRANSFORM_ID, count_all, lambda e: {"examples": [e], "schema": [schema]}),
        ("evaluator", names.EVALUATOR_ID, count_eval, lambda e: {"examples": [e], "model": [model]}),
    ):
        lines = {}
        for engine, args in (("direct", direct), ("flink", on_flink)):
            out = os.path.join(work, f"engines_{name}_{engine}")
            # Empty output folders: TFT refuses to publish over an earlier bench's transform graph.
            for suffix in ("_x1", f"_x{copies}"):
                shutil.rmtree(out + suffix, ignore_errors=True)
            once = stages.run_executor(by_id[component], inputs(examples), out + "_x1", args)
            many = stages.run_executor(
                by_id[component], inputs(many_all if name == "transform" else many_eval), out + f"_x{copies}", args
            )
            lines[engine] = _line(once, many, count, copies)
            # Each figure as soon as it exists: a Flink stage can take long on a loaded machine.
            print(f"[bench] {name} on {engine}: {lines[engine]}", file=sys.stderr, flush=True)
        results[f"{name}_engines"] = dict(
            lines, images=count, flink_overtakes_at_images=_crossover(lines["direct"], lines["flink"])
        )
    return results
