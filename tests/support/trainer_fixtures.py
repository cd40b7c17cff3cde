"""Real Transform output and Trainer FnArgs (built as the TFX Trainer executor does) for trainer tests."""

import argparse
import atexit
import dataclasses
import functools
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Optional

REPO = pathlib.Path(__file__).resolve().parents[2]
# Run as a script (a killed trainer, a cluster replica), the repo's packages and `support` must be importable too.
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import config  # noqa: E402,F401  the Keras switch, before TensorFlow
from absl import logging as absl_logging  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ml_metadata.metadata_store import metadata_store  # noqa: E402
from tfx import types  # noqa: E402
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen  # noqa: E402
from tfx.components.trainer import executor as trainer_executor  # noqa: E402
from tfx.orchestration import metadata, pipeline  # noqa: E402
from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # noqa: E402
from tfx.proto import trainer_pb2  # noqa: E402
from tfx.types import artifact_utils, standard_artifacts  # noqa: E402
from tfx.utils import json_utils, proto_utils  # noqa: E402

from config import names  # noqa: E402
from components.example_gen import TfdsExampleGen  # noqa: E402
from components.transform import Transform  # noqa: E402
from config.profiles import load_config  # noqa: E402
from pipeline.pipeline import PREPROCESSING_FN, RUN_FN  # noqa: E402
from trainer import run  # noqa: E402

SCHEMA_FILE = str(REPO / "transform" / "schema.pbtxt")
# Train / eval example counts: two training batches of the tiny profile's 8, so an epoch has two steps.
TRAIN_IMAGES, EVAL_IMAGES = 16, 8


def tiny_config(**overrides: Any):
    """The tiny profile in float32 with `key=value` overrides such as `{"train.epochs": 0}`.

    Float32 unless overridden: these tests compare numbers, and "auto" picks bfloat16 on some CPUs.
    """
    values = {"model.mixed_precision": "none", **overrides}
    return load_config("tiny", overrides=[f"{key}={json.dumps(value)}" for key, value in values.items()])


def transform_component(examples: types.Channel, schema: types.Channel) -> Transform:
    """The project's Transform as the tiny profile configures it."""
    return Transform(
        examples=examples,
        schema=schema,
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"image_size": tiny_config().model.image_size},
    )


@functools.lru_cache(maxsize=None)
def transformed_data(root: str) -> str:
    """Runs TfdsExampleGen -> ImportSchemaGen -> Transform under LocalDagRunner once; returns its MLMD path.

    Cached per root: the test modules share one session folder, so the Beam pipeline runs once.
    """
    example_gen = TfdsExampleGen(
        data_dir=os.path.join(root, "tfds"),
        source="synthetic",
        synthetic_train_images=TRAIN_IMAGES,
        synthetic_test_images=EVAL_IMAGES,
        synthetic_seed=3,
    )
    schema_gen = ImportSchemaGen(schema_file=SCHEMA_FILE)
    transform = transform_component(example_gen.outputs["examples"], schema_gen.outputs["schema"])
    metadata_path = os.path.join(root, "mlmd.sqlite")
    LocalDagRunner().run(
        pipeline.Pipeline(
            pipeline_name="trainer_test",
            pipeline_root=os.path.join(root, "pipeline_root"),
            components=[example_gen, schema_gen, transform],
            metadata_connection_config=metadata.sqlite_metadata_connection_config(metadata_path),
        )
    )
    return metadata_path


def output(metadata_path: str, artifact_type, producer: str, key: str = ""):
    """The artifact of a type that `producer` wrote (under `<pipeline_root>/<producer>/<key>`), as TFX sees it."""
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))
    for mlmd_artifact in store.get_artifacts_by_type(artifact_type.TYPE_NAME):
        if f"/{producer}/{key}" in mlmd_artifact.uri:
            result = artifact_type()
            result.set_mlmd_artifact(mlmd_artifact)
            return result
    raise LookupError(f"no {artifact_type.TYPE_NAME} from {producer} in {metadata_path}")


raw_examples = functools.partial(output, artifact_type=standard_artifacts.Examples, producer=names.EXAMPLE_GEN_ID)
transformed_examples = functools.partial(output, artifact_type=standard_artifacts.Examples, producer=names.TRANSFORM_ID)


def executor_args(metadata_path: str, execution_id: int, config, base_model: Optional[str] = None):
    """(input_dict, output_dict, exec_properties) of the Trainer executor for `config`, as TFX passes them.

    Outputs go under the Transform run's pipeline root. `execution_id` plays the TFX execution: each
    (a retry too) gets fresh output URIs, laid out as `<pipeline_root>/Trainer/model/<id>` like the
    launcher's. `base_model` is a Model artifact URI.
    """
    input_dict = {
        "examples": [transformed_examples(metadata_path)],
        "transform_graph": [output(metadata_path, standard_artifacts.TransformGraph, names.TRANSFORM_ID)],
        "schema": [output(metadata_path, standard_artifacts.Schema, names.SCHEMA_GEN_ID)],
    }
    if base_model:
        base = standard_artifacts.Model()
        base.uri = base_model
        input_dict["base_model"] = [base]
    trainer_root = pathlib.Path(metadata_path).parent / "pipeline_root" / "Trainer"
    output_dict = {}
    for key, artifact_type in (("model", standard_artifacts.Model), ("model_run", standard_artifacts.ModelRun)):
        out = artifact_type()
        out.uri = str(trainer_root / key / str(execution_id))
        output_dict[key] = [out]
    exec_properties = {
        "run_fn": RUN_FN,
        "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=config.train.steps_per_epoch or 0)),
        "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=0)),
        "custom_config": json_utils.dumps(
            {"model": dataclasses.asdict(config.model), "train": dataclasses.asdict(config.train)}
        ),
    }
    return input_dict, output_dict, exec_properties


def fn_args(metadata_path: str, execution_id: int, config, base_model: Optional[str] = None):
    """FnArgs from the real Trainer executor for `executor_args(...)`."""
    return trainer_executor.GenericExecutor()._GetFnArgs(
        *executor_args(metadata_path, execution_id, config, base_model)
    )


def split_records(examples_artifact, split: str):
    """Serialized tf.Examples of one split (gzip or plain tfrecords, as written)."""
    from report.example_records import tfrecords  # TensorFlow-heavy; the killed-trainer worker script never needs it

    [uri] = artifact_utils.get_split_uris([examples_artifact], split)

    return [r.numpy() for r in tfrecords(sorted(tf.io.gfile.glob(os.path.join(uri, "*"))))]


# Execution ids of the shared trainings (tests pick others for their own runs).
TRAINED_ID, LIMITED_ID = 1, 2
# serving_max_pixels of the `limited_model` export: 100x100, below the 333x171 test image.
SMALL_MAX_PIXELS = 10_000


@functools.lru_cache(maxsize=None)
def _trained(metadata_path: str):
    fn_args_ = fn_args(metadata_path, TRAINED_ID, tiny_config())
    run.run_fn(fn_args_)
    return fn_args_


@functools.lru_cache(maxsize=None)
def _limited(metadata_path: str):
    base = pathlib.Path(_trained(metadata_path).serving_model_dir).parent
    fn_args_ = fn_args(
        metadata_path,
        LIMITED_ID,
        tiny_config(**{"train.epochs": 0, "model.serving_max_pixels": SMALL_MAX_PIXELS}),
        base_model=str(base),
    )
    run.run_fn(fn_args_)
    return fn_args_


@functools.lru_cache(maxsize=None)
def _session_root() -> str:
    # Not pytest's tmp_path: other pytest sessions on a shared machine prune all but the newest three
    # /tmp/pytest-of-<user>/pytest-N folders, this session's included while it is still running.
    root = tempfile.mkdtemp(prefix="petseg-trainer-test-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


# Module-scoped fixtures over session-wide caches: each test module asks for them, the work runs once.
@pytest.fixture(scope="module")
def transform_run() -> str:
    """MLMD path of a real TfdsExampleGen -> ImportSchemaGen -> Transform run on synthetic pets."""
    return transformed_data(_session_root())


@pytest.fixture(scope="module")
def trained(transform_run):
    """FnArgs of a 2-epoch tiny-profile run_fn that has finished (its model is exported)."""
    return _trained(transform_run)


@pytest.fixture(scope="module")
def limited(transform_run):
    """FnArgs of an epochs=0 run_fn warm-started from `trained`, exported with SMALL_MAX_PIXELS."""
    return _limited(transform_run)


class AfterEpoch(tf.keras.callbacks.Callback):
    """Calls `action` once epoch number `epoch` (1-based) ends, after its backup is written."""

    def __init__(self, epoch: int, action):
        super().__init__()
        self.epoch, self.action = epoch, action

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.action()


def _exit_abruptly(code: int) -> None:
    # No cleanup, like a preempted VM.
    sys.stdout.flush()
    os._exit(code)


# Callbacks for `signalling_run_fn`, set by `_main` (this file run as a script) before it runs the executor.
EXTRA_CALLBACKS: list = []


def signalling_run_fn(fn_args_) -> None:
    """`run.run_fn` with the script's EXTRA_CALLBACKS: what the executor runs when a test must see an epoch end.

    TFX reloads the module it imports a run_fn from, which resets this module's globals: the callbacks
    are read from the script's own module, `__main__`.
    """
    run.run_fn(fn_args_, extra_callbacks=sys.modules["__main__"].EXTRA_CALLBACKS)


def _main() -> None:
    # A Trainer in its own process: run_fn killed after an epoch, or TFX's Trainer executor (a replica).
    parser = argparse.ArgumentParser()
    parser.add_argument("--metadata", required=True)
    parser.add_argument("--execution-id", type=int, required=True)
    parser.add_argument("--overrides", default="{}", help="JSON dict for tiny_config")
    parser.add_argument("--exit-after-epoch", type=int, default=0)
    parser.add_argument("--exit-code", type=int, default=17)
    parser.add_argument("--executor", action="store_true", help="run TFX's Trainer executor, not run_fn alone")
    parser.add_argument("--signal-after-epoch", type=int, default=0)
    parser.add_argument("--signal-fd", type=int, help="a pipe's write end inherited from the test")
    args = parser.parse_args()
    config = tiny_config(**json.loads(args.overrides))
    if not args.executor:
        callbacks = (
            [AfterEpoch(args.exit_after_epoch, functools.partial(_exit_abruptly, args.exit_code))]
            if args.exit_after_epoch
            else []
        )
        run.run_fn(fn_args(args.metadata, args.execution_id, config), extra_callbacks=callbacks)
        return
    # The replica's log, as a pod's would show it: ours and TFX's (absl) INFO lines, timestamped.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    absl_logging.set_verbosity(absl_logging.INFO)
    input_dict, output_dict, exec_properties = executor_args(args.metadata, args.execution_id, config)
    if args.signal_after_epoch:
        # One byte down the pipe, and training goes on.
        signal = functools.partial(os.write, args.signal_fd, b"1")
        EXTRA_CALLBACKS.append(AfterEpoch(args.signal_after_epoch, signal))
        # The executor imports run_fn by module path: this module under its importable name.
        exec_properties["run_fn"] = f"support.trainer_fixtures.{signalling_run_fn.__name__}"
    trainer_executor.GenericExecutor().Do(input_dict, output_dict, exec_properties)


if __name__ == "__main__":
    _main()
