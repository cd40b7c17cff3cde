"""`python -m bench.run --scale`: the data stages at growing image counts, each executor in its own process, and the
full model's step."""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from config import names
from config.profiles import PROFILES

# Image counts (train + test) the data stages run at: the Oxford set's 7,349 and two fractions of it.
SIZES = (1000, 3680, 7349)
# The Oxford set's split (trainval : test); every size is split in the same proportion.
OXFORD_SPLIT = (3680, 3669)
# A child that imports and builds the pipeline like every stage's, then runs nothing: the RSS floor.
IMPORTS_ONLY = "imports-only"
STAGES = (names.EXAMPLE_GEN_ID, names.STATISTICS_GEN_ID, names.TRANSFORM_ID, names.EVALUATOR_ID)
# The Evaluator's stand-in model: the tiny profile's shape (at the scale profile's image size, so
# decoding, resizing and the metrics cost per image what they cost in the real run), 1/83 of the
# full model's inference FLOPs at 224x224, with the same signatures because the real Trainer exports it.
SMALL_MODEL = tuple(
    f"{k}={v}" for k, v in PROFILES["tiny"].items() if k.startswith("model.") and k != "model.image_size"
) + ("model.encoder_weights=none",)


def split(total: int) -> Tuple[int, int]:
    """(train, test) images for `total`, in the Oxford set's proportion."""
    train = round(total * OXFORD_SPLIT[0] / sum(OXFORD_SPLIT))
    return train, total - train


def short_eval(transformed, images: int, folder: pathlib.Path):
    """`transformed` (an Examples artifact) with its train split as is and only `images` eval records.

    The one-step Trainer runs exist for their export; Keras would otherwise validate the full model
    on the whole eval split, minutes of forward passes that no figure here reads.
    """
    import copy

    import tensorflow as tf

    clone = copy.deepcopy(transformed)
    clone.uri = str(folder)
    train = folder / "Split-train"
    train.mkdir(parents=True, exist_ok=True)
    for path in pathlib.Path(transformed.uri, "Split-train").iterdir():
        (train / path.name).symlink_to(path)
    eval_files = sorted(str(p) for p in pathlib.Path(transformed.uri, "Split-eval").iterdir())
    (folder / "Split-eval").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / "Split-eval" / "first-records")) as writer:
        for record in tf.data.TFRecordDataset(eval_files).take(images):
            writer.write(record.numpy())
    return clone


class Stage:
    """Runs one component's real executor in a fresh Python process: its peak RSS is its own."""

    def __init__(self, profile: str, overrides: Sequence[str], work: pathlib.Path):
        self.profile, self.overrides, self.work = profile, list(overrides), work

    def __call__(
        self, component_id: str, inputs: Dict[str, list], label: str, extra: Sequence[str] = ()
    ) -> Tuple[Dict[str, list], Dict[str, float]]:
        from tfx.utils import json_utils

        out_dir = self.work / label
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "profile": self.profile,
            "overrides": self.overrides + list(extra),
            "component": component_id,
            "inputs": json_utils.dumps(inputs),
            "out_dir": str(out_dir),
        }
        (out_dir / "spec.json").write_text(json.dumps(spec, indent=1))
        _child(["--stage", str(out_dir / "spec.json")], out_dir / "stage.log")
        result = json.loads((out_dir / "result.json").read_text())
        return json_utils.loads(result.pop("outputs")), result


def _child(args: List[str], log: pathlib.Path) -> None:
    with open(log, "w") as stream:
        proc = subprocess.run([sys.executable, "-m", "bench.scale", *args], stdout=stream, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"bench.scale {' '.join(args)} failed (exit {proc.returncode}):\n{log.read_text()[-4000:]}")


def _progress(text: str) -> None:
    print(f"[bench] {text} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)


def scale_figures(
    profile: str,
    overrides: Sequence[str],
    sizes: Sequence[int],
    work: pathlib.Path,
    evaluator_model: str = "small",
    train_batch: int = 8,
    train_steps: int = 3,
    validation_profile: str = "seed",
    matmul_size: int = 2048,
) -> Dict[str, object]:
    """Every figure of `--scale`; `overrides` (the user's --set) apply to the scale and the validation profile."""
    from tfx.types import standard_artifacts

    from bench import stages
    from config.profiles import load_config

    sizes = sorted(sizes)
    per_size: Dict[int, Dict[str, Dict[str, float]]] = {}
    counts: Dict[int, Dict[str, int]] = {}
    model = schema = None
    results: Dict[str, object] = {
        "scale_profile": profile,
        "scale_overrides": list(overrides),
        "scale_evaluator_model": evaluator_model,
    }
    for total in sizes:
        train, test = split(total)
        folder = work / f"images-{total}"
        run = Stage(
            profile,
            [
                *overrides,
                f"data.synthetic_train_images={train}",
                f"data.synthetic_test_images={test}",
                f"output={folder}",
            ],
            folder / "stages",
        )
        config = load_config(profile, overrides=run.overrides)
        figures = per_size[total] = {}
        by_id, beam_args = stages.components(config)
        if schema is None:  # the same schema file at every size; not a measured stage, so in this process
            _, schema = stages.execute(by_id[names.SCHEMA_GEN_ID], {}, str(folder / names.SCHEMA_GEN_ID), beam_args)
        examples, figures[names.EXAMPLE_GEN_ID] = run(names.EXAMPLE_GEN_ID, {}, names.EXAMPLE_GEN_ID)
        _progress(f"scale {total}: {names.EXAMPLE_GEN_ID} {figures[names.EXAMPLE_GEN_ID]}")
        example = examples["examples"][0]
        counts[total] = {
            "train": example.get_int_custom_property("num_train"),
            "eval": example.get_int_custom_property("num_eval"),
        }
        data_inputs = {"examples": examples["examples"], "schema": schema["schema"]}
        _, figures[names.STATISTICS_GEN_ID] = run(names.STATISTICS_GEN_ID, data_inputs, names.STATISTICS_GEN_ID)
        _progress(f"scale {total}: {names.STATISTICS_GEN_ID} {figures[names.STATISTICS_GEN_ID]}")
        transformed, figures[names.TRANSFORM_ID] = run(names.TRANSFORM_ID, data_inputs, names.TRANSFORM_ID)
        _progress(f"scale {total}: {names.TRANSFORM_ID} {figures[names.TRANSFORM_ID]}")
        if "scale_imports_only_peak_rss_mb" not in results:
            results["scale_imports_only_peak_rss_mb"] = run(IMPORTS_ONLY, {}, IMPORTS_ONLY)[1]["peak_rss_mb"]
        if model is None:
            # One model for every size: the Evaluator's per-image cost must not change with the model.
            examples_for_trainer = short_eval(
                transformed["transformed_examples"][0], train_batch, folder / "transformed_short_eval"
            )
            trainer_inputs = {
                "examples": [examples_for_trainer],
                "transform_graph": transformed["transform_graph"],
                "schema": schema["schema"],
            }
            short = ["train.epochs=1", "train.steps_per_epoch=1", f"train.batch_size={train_batch}"]
            full, trained = run(names.TRAINER_ID, trainer_inputs, "Trainer-profile-model", short)
            _progress(f"scale: the profile's model trained one step and exported in {trained['seconds']} s")
            blessing = standard_artifacts.ModelBlessing()
            blessing.uri = str(folder / "blessing")
            blessing.set_int_custom_property("blessed", 1)
            stages.execute(
                by_id[names.PUSHER_ID],
                {"model": full["model"], "model_blessing": [blessing]},
                str(folder / names.PUSHER_ID),
                beam_args,
            )
            # Loading the full model to count its weights takes GBs: not in this process, which launches the rest.
            served = folder / "served.json"
            _child(["--served", config.serving_dir, str(served)], folder / "served.log")
            results.update(json.loads(served.read_text()))
            _progress(f"scale: served_model_bytes_ratio {results['served_model_bytes_ratio']}")
            model = full["model"]
            if evaluator_model == "small":
                small, _ = run(names.TRAINER_ID, trainer_inputs, "Trainer-small-model", short + list(SMALL_MODEL))
                model = small["model"]
        _, figures[names.EVALUATOR_ID] = run(
            names.EVALUATOR_ID, {"examples": examples["examples"], "model": model}, names.EVALUATOR_ID
        )
        _progress(f"scale {total}: {names.EVALUATOR_ID} {figures[names.EVALUATOR_ID]}")
    results.update(growth(per_size, counts))

    full_dir = work / "full_model"
    full_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "profile": profile,
        "overrides": list(overrides),
        "validation_profile": validation_profile,
        "validation_overrides": list(overrides),
        "batch": train_batch,
        "steps": train_steps,
        "matmul_size": matmul_size,
    }
    (full_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    _progress("scale: the full model's train step, float32 and bfloat16, and the validation share")
    _child(["--full-model", str(full_dir / "spec.json")], full_dir / "full_model.log")
    results.update(json.loads((full_dir / "result.json").read_text()))
    return results


def growth(per_size: Dict[int, Dict[str, Dict[str, float]]], counts: Dict[int, Dict[str, int]]) -> Dict[str, object]:
    """Per stage and size: seconds per image and peak RSS; their ratios largest / smallest size, and the worst."""
    sizes = sorted(per_size)
    small, large = sizes[0], sizes[-1]

    def images(stage: str, size: int) -> int:
        # The Evaluator reads the eval split; the other stages read both splits.
        return counts[size]["eval"] if stage == names.EVALUATOR_ID else counts[size]["train"] + counts[size]["eval"]

    table, time_ratio, rss_ratio, marginal = {}, {}, {}, {}
    for stage in STAGES:
        rows = {}
        for size in sizes:
            f = per_size[size][stage]
            rows[str(size)] = {
                "images": images(stage, size),
                "seconds": f["seconds"],
                "ms_per_image": round(1e3 * f["seconds"] / images(stage, size), 2),
                "peak_rss_mb": f["peak_rss_mb"],
            }
        table[stage] = rows
        time_ratio[stage] = round(rows[str(large)]["ms_per_image"] / rows[str(small)]["ms_per_image"], 3)
        rss_ratio[stage] = round(rows[str(large)]["peak_rss_mb"] / rows[str(small)]["peak_rss_mb"], 3)
        # Seconds per extra image between consecutive sizes: rising from one interval to the next is
        # what growing faster than linearly looks like, free of the fixed start-up.
        marginal[stage] = {
            f"{a}-{b}": round(
                1e3 * (rows[str(b)]["seconds"] - rows[str(a)]["seconds"]) / max(1, images(stage, b) - images(stage, a)),
                2,
            )
            for a, b in zip(sizes, sizes[1:])
        }
    return {
        "scale_time_per_image_ratio": max(time_ratio.values()),
        "scale_peak_rss_ratio": max(rss_ratio.values()),
        "scale_time_per_image_ratio_by_stage": time_ratio,
        "scale_peak_rss_ratio_by_stage": rss_ratio,
        "scale_marginal_ms_per_image": marginal,
        "scale_stages": table,
        "scale_images": {str(s): counts[s] for s in sizes},
    }


def _peak_rss_mb() -> Dict[str, float]:
    """This process's peak RSS since it started, and the largest of its waited-for children's.

    VmHWM, not getrusage: Linux carries the launching process's peak into a child's ru_maxrss across
    fork and exec, so every child would report at least the bench's own peak. Children (Beam or
    drawing workers, if any) only have ru_maxrss, which starts at this process's RSS when they fork.
    """
    with open("/proc/self/status") as f:
        own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own), "largest_child_peak_rss_mb": round(children)}


def _run_stage(spec_file: str) -> None:
    from tfx.utils import json_utils

    from bench import stages
    from config.profiles import load_config

    spec = json.loads(pathlib.Path(spec_file).read_text())
    config = load_config(spec["profile"], overrides=spec["overrides"])
    by_id, beam_args = stages.components(config)
    seconds, outputs = 0.0, {}
    if spec["component"] != IMPORTS_ONLY:
        inputs = json_utils.loads(spec["inputs"])
        seconds, outputs = stages.execute(by_id[spec["component"]], inputs, spec["out_dir"], beam_args)
    result = {"seconds": round(seconds, 2), **_peak_rss_mb(), "outputs": json_utils.dumps(outputs)}
    pathlib.Path(spec["out_dir"], "result.json").write_text(json.dumps(result))


def _run_full_model(spec_file: str) -> None:
    from bench import training
    from config.profiles import load_config

    spec = json.loads(pathlib.Path(spec_file).read_text())
    config = load_config(spec["profile"], overrides=spec["overrides"])
    validation = load_config(spec["validation_profile"], overrides=spec["validation_overrides"])
    result = training.full_model_figures(
        config,
        validation,
        spec["batch"],
        spec["steps"],
        real_train_images=OXFORD_SPLIT[0],
        real_eval_images=OXFORD_SPLIT[1],
        matmul_size=spec["matmul_size"],
    )
    result["full_model_peak_rss_mb"] = _peak_rss_mb()["peak_rss_mb"]
    pathlib.Path(spec_file).with_name("result.json").write_text(json.dumps(result))


def _main(argv: Optional[List[str]] = None) -> None:
    import argparse
    import warnings

    parser = argparse.ArgumentParser(
        description="One --scale child: a stage's executor, the full model's step, or the served model's bytes."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stage", metavar="SPEC_JSON")
    mode.add_argument("--full-model", metavar="SPEC_JSON")
    mode.add_argument("--served", nargs=2, metavar=("SERVING_DIR", "RESULT_JSON"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    if args.stage:
        _run_stage(args.stage)
    elif args.served:
        from bench import model_bytes

        pathlib.Path(args.served[1]).write_text(json.dumps(model_bytes.served_model_figures(args.served[0])))
    else:
        _run_full_model(args.full_model)
    print(f"[bench.scale] done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    _main()
