"""`make bench`: runs the pipeline twice, then times each stage against its limit; writes bench/results.json."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

from bench import scale
from config import names

# Figures for every stage, in the order they are printed.
HEADLINE = (
    "trainer_mfu",
    "input_pipeline_ratio",
    "input_pipeline_ratio_streaming",
    "transform_ratio",
    "transform_marginal_ratio",
    "transformed_bytes_ratio",
    "evaluator_ratio",
    "serving_overhead_ratio",
    "cached_rerun_ratio",
    "served_model_bytes_ratio",
    "model_copies_per_run",
)
SCALE_HEADLINE = (
    "served_model_bytes_ratio",
    "scale_time_per_image_ratio",
    "scale_peak_rss_ratio",
    "validation_epoch_share",
)
GOALS = {
    "trainer_mfu": ">= 0.5",
    "input_pipeline_ratio": ">= 0.95",
    "input_pipeline_ratio_streaming": ">= 0.95",
    "transform_ratio": ">= 0.5",
    "transform_marginal_ratio": ">= 0.5",
    "transformed_bytes_ratio": "<= 1.1",
    "evaluator_ratio": "<= 2.0",
    "serving_overhead_ratio": "<= 1.1",
    "cached_rerun_ratio": "<= 0.1",
    "served_model_bytes_ratio": "<= 1.05",
    "model_copies_per_run": "<= 1.0 (local)",
    "scale_time_per_image_ratio": "<= 1.0",
    "scale_peak_rss_ratio": "<= 1.5",
    "validation_epoch_share": "<= 0.15",
}


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """One progress line per stage on stderr, with its wall time and the machine's load."""
    start = time.perf_counter()
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    yield
    print(
        f"[bench] {name} done in {time.perf_counter() - start:.0f} s (load {os.getloadavg()[0]:.1f})",
        file=sys.stderr,
        flush=True,
    )


def pipeline_runs(profile: str, overrides: List[str], output: pathlib.Path) -> Tuple[Dict[str, object], list]:
    """A first `petseg run` into a fresh folder, then the same command again (everything cached).

    Also returns the model files on disk after each run (`model_bytes.model_files`), to count what each wrote.
    """
    from bench import model_bytes

    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "run",
        "--profile",
        profile,
        "--output",
        str(output),
        *_set_args(overrides),
    ]
    seconds, components, snapshots = [], [], []
    for _ in range(2):
        start = time.perf_counter()
        _run(command)
        seconds.append(time.perf_counter() - start)
        components.append(json.loads((output / "summary.json").read_text())["components"])
        snapshots.append(model_bytes.model_files(str(output)))
    return {
        "cached_rerun_ratio": round(seconds[1] / seconds[0], 3),
        "pipeline_seconds": {"first_run": round(seconds[0], 1), "cached_rerun": round(seconds[1], 1)},
        "pipeline_component_seconds": {name: c["seconds"] for name, c in components[0].items()},
        "cached_rerun_all_cached": all(c["cached"] for c in components[1].values()),
    }, snapshots


def replica_sweep(profile: str, overrides: List[str], counts: List[int], steps: int) -> Dict[str, object]:
    """Training img/s per logical-CPU replica count; one process each (devices split only at start-up)."""
    sweep = {}
    for n in counts:
        stdout = _run(
            [
                sys.executable,
                "-m",
                "bench.training",
                "--replicas",
                str(n),
                "--profile",
                profile,
                "--steps",
                str(steps),
                *_set_args(overrides),
            ]
        )
        sweep[str(n)] = json.loads(stdout.strip().splitlines()[-1])
    return sweep


def _set_args(overrides: List[str]) -> List[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _run(command: List[str]) -> str:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def measure_all(args: argparse.Namespace) -> Dict[str, object]:
    import tensorflow as tf

    from bench import measure, stages, training
    from config.profiles import load_config
    from report.artifacts import RunArtifacts

    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="petseg-bench-"))
    overrides = [f"train.epochs={args.pipeline_epochs}"]
    if args.images:
        overrides += [f"data.synthetic_train_images={args.images[0]}", f"data.synthetic_test_images={args.images[1]}"]
    overrides += args.set
    results: Dict[str, object] = {
        "profile": args.profile,
        "overrides": overrides,
        "machine_at_start": measure.machine(),
    }
    started = time.perf_counter()
    snapshots = []
    if not args.reuse_run:
        with stage("pipeline: first run, then an unchanged re-run"):
            figures, snapshots = pipeline_runs(args.profile, overrides, work / "run")
            results.update(figures)

    config = load_config(args.profile, overrides=overrides + [f"output={work / 'run'}"])
    if args.only_engines:
        from bench import engines
        from engine import flink

        spec = engines.local_cluster(str(work))
        with stage("engines: Flink (parallelism 2) vs DirectRunner, Transform and Evaluator"):
            spec = flink.ClusterSpec(**flink.up(spec, timeout=900)["spec"])  # with the ports bound
            try:
                run = RunArtifacts(config.metadata_path, config.name)
                results.update(engines.engine_figures(config, run, str(work), spec))
            finally:
                flink.down(spec)
        results["machine_at_end"] = measure.machine()
        results["bench_seconds"] = round(time.perf_counter() - started, 1)
        return results
    with stage("model bytes: served model vs its weights, model copies per run"):
        results.update(model_figures(config, snapshots))
    gpu = bool(tf.config.list_physical_devices("GPU"))
    with stage("matmul peak"):
        peak = {
            "float32": measure.matmul_flops_per_second(tf.float32),
            "bfloat16": measure.matmul_flops_per_second(tf.bfloat16),
        }
        if gpu:
            peak["float16"] = measure.matmul_flops_per_second(tf.float16)
    results["matmul_gflops"] = {k: round(v / 1e9, 1) for k, v in peak.items()}

    run = RunArtifacts(config.metadata_path, config.name)
    examples = run.get(names.EXAMPLE_GEN_ID, "examples")
    train_examples = int(examples.get_int_custom_property("num_train") or config.data.synthetic_train_images)
    with stage("trainer: MFU, input pipeline, batch sweep"):
        results.update(
            training.trainer_figures(
                config,
                run.get(names.TRANSFORM_ID, "transformed_examples").uri,
                run.get(names.TRANSFORM_ID, "transform_graph").uri,
                train_examples,
                args.batch_sizes,
                peak,
                args.train_steps,
            )
        )
    # On a GPU machine the trainer figures above ran on the GPU (TensorFlow's default device).
    results["gpu_mfu"] = results["trainer_mfu"] if gpu else "skipped: no GPU"
    with stage("transform: Beam executor vs tf.data"):
        results.update(stages.transform_figures(config, run, str(work)))
    with stage("evaluator: TFMA executor vs bare model"):
        results.update(stages.evaluator_figures(config, run, str(work)))
    if args.engines:
        from bench import engines
        from engine import flink

        spec = engines.local_cluster(str(work))
        with stage("engines: Flink (parallelism 2) vs DirectRunner, Transform and Evaluator"):
            spec = flink.ClusterSpec(**flink.up(spec, timeout=900)["spec"])  # with the ports bound
            try:
                results.update(engines.engine_figures(config, run, str(work), spec))
            finally:
                flink.down(spec)
    with stage("serving: serving_default vs decode + model"):
        results.update(stages.serving_figures(config, run))
    with stage("replicas: one process per count"):
        results["train_images_per_second_by_replicas"] = replica_sweep(
            args.profile, args.set, args.replicas, args.train_steps
        )
    results["peak_rss_mb"] = round(measure.peak_rss_mb())
    results["machine_at_end"] = measure.machine()
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return results


def model_figures(config, snapshots: list) -> Dict[str, object]:
    """Served-model and copy figures of the bench's pipeline run (`snapshots`: its model files after each run)."""
    from bench import model_bytes
    from report.artifacts import RunArtifacts

    trainer_model = RunArtifacts(config.metadata_path, config.name).get(names.TRAINER_ID, "model")
    one_model = model_bytes.folder_bytes(os.path.join(trainer_model.uri, "Format-Serving"))
    # On a reused run only its final state is known: bytes per run cannot be told apart then.
    snapshots = snapshots or [model_bytes.model_files(str(config.output_dir))]
    return {
        **model_bytes.served_model_figures(config.serving_dir),
        **model_bytes.model_copies_figures(
            snapshots,
            one_model,
            ["first_run", "cached_rerun"][: len(snapshots)] if len(snapshots) > 1 else ["final_state"],
        ),
    }


def measure_scale(args: argparse.Namespace) -> Dict[str, object]:
    """`--scale`: the data stages at growing sizes and the full model's step (bench/scale.py)."""
    from bench import measure

    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="petseg-bench-scale-"))
    profile = args.scale_profile
    results: Dict[str, object] = {"machine_at_start": measure.machine()}
    started = time.perf_counter()
    with stage(f"scale: {profile} at {args.scale_sizes} images"):
        results.update(
            scale.scale_figures(
                profile,
                args.set,
                args.scale_sizes,
                work,
                evaluator_model=args.scale_evaluator_model,
                train_batch=args.scale_train_batch,
                train_steps=args.scale_train_steps,
                validation_profile=args.validation_profile,
                matmul_size=args.matmul_size,
            )
        )
    results["machine_at_end"] = measure.machine()
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_table(results: Dict[str, object], headline=HEADLINE) -> None:
    print(f"{'ratio':<30} {'value':>8}  goal", flush=True)
    for key in headline:
        print(f"{key:<30} {str(results.get(key, 'n/a')):>8}  {GOALS[key]}")
    if "gpu_mfu" in results:
        print(f"{'gpu_mfu':<30} {results.get('gpu_mfu')}")
    for key in ("scale_time_per_image_ratio_by_stage", "scale_peak_rss_ratio_by_stage"):
        for name, value in (results.get(key) or {}).items():
            print(f"  {key.replace('_by_stage', '')}[{name}]".ljust(31) + f"{value:>8}")
    print(json.dumps({k: v for k, v in results.items() if k not in headline}, indent=1), flush=True)


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="quick", help="config profile whose model and data are measured")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--pipeline-epochs",
        type=int,
        default=1,
        help="epochs of the measured pipeline runs (timing needs a model, not a good one)",
    )
    # The profile's own data by default: Transform's and TFMA's fixed start-up weigh what they weigh
    # in `make run`, not what they would on a toy split.
    parser.add_argument(
        "--images", type=_ints, metavar="TRAIN,EVAL", help="synthetic images per split (default: the profile's own)"
    )
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps per figure")
    parser.add_argument("--batch-sizes", type=_ints, default=[4, 8, 16, 32, 64])
    parser.add_argument("--replicas", type=_ints, default=[1, 2])
    parser.add_argument("--work", help="keep the runs and outputs here (default: a temporary folder)")
    parser.add_argument(
        "--reuse-run",
        action="store_true",
        help="measure the stages on the finished run in --work/run instead of running the pipeline",
    )
    parser.add_argument(
        "--engines",
        action="store_true",
        help="also time Transform and Evaluator on a local Flink cluster vs DirectRunner",
    )
    parser.add_argument(
        "--only-engines",
        action="store_true",
        help="with --reuse-run: only the engines stage (skips trainer, serving and replica figures)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only the cost growth: data stages at --scale-sizes images, each executor in its own "
        "process, and the full model's train step (not part of `make bench`)",
    )
    parser.add_argument(
        "--scale-profile",
        default="rehearsal",
        help="profile --scale runs: the seed recipe on offline data like the real set's",
    )
    parser.add_argument(
        "--scale-sizes",
        type=_ints,
        default=list(scale.SIZES),
        metavar="N,N,...",
        help="images (train + test, split as the Oxford set) per --scale round",
    )
    parser.add_argument(
        "--scale-evaluator-model",
        choices=("small", "profile"),
        default="small",
        help="the Evaluator's model at --scale: a small one of the same signatures (TFMA's cost per "
        "image, not the model's), or the profile's own",
    )
    parser.add_argument(
        "--scale-train-batch",
        type=int,
        default=8,
        help="batch of --scale's full-model train step and of its one-step Trainer runs",
    )
    parser.add_argument(
        "--scale-train-steps",
        type=int,
        default=3,
        help="timed steps of --scale's full-model train step figures (several seconds each on CPU)",
    )
    parser.add_argument(
        "--validation-profile",
        default="seed",
        help="the recipe whose validation share --scale reports (with the --set overrides)",
    )
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="side of the dense matmul whose FLOP/s --scale's MFU divides by"
    )
    parser.add_argument("--output", help="default: bench/results.json, or bench/scale_results.json with --scale")
    args = parser.parse_args(argv)
    args.output = args.output or str(
        pathlib.Path(__file__).parent / ("scale_results.json" if args.scale else "results.json")
    )
    if args.reuse_run and not args.work:
        parser.error("--reuse-run needs --work")
    if args.only_engines and not args.reuse_run:
        parser.error("--only-engines needs --reuse-run")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Library deprecation notices would bury the figures; the pipeline runs keep their own logs.
    warnings.filterwarnings("ignore")
    results = measure_scale(args) if args.scale else measure_all(args)
    pathlib.Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print_table(results, SCALE_HEADLINE if args.scale else HEADLINE)
    print(f"[bench] wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
