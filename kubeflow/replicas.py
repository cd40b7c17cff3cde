"""What every replica of a multi-worker Trainer runs, on Vertex and on a TFJob alike: TFX's own Trainer executor.

One mechanism for both targets: the pipeline is built with the Trainer's executor swapped for one that
starts a job of replicas on the platform and waits for it (Vertex: TFX's Google Cloud extension,
kubeflow/vertex.py; open-source KFP: kubeflow/tfjob_executor.py). Each replica runs
`python -m tfx.scripts.run_executor` with TFX's GenericExecutor and the serialized artifacts and
properties, as TFX's extension builds it for a CustomJob; the executor imports run_fn
(trainer.run.run_fn) from the image's PYTHONPATH (/app).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import config

COMMAND = ("python", "-m", "tfx.scripts.run_executor")
GENERIC_EXECUTOR = "tfx.components.trainer.executor.GenericExecutor"
# run_executor imports TensorFlow before our `config` package could set the Keras switch
# (config/__init__.py), so the container gets it from its environment.
ENV = ({"name": config.KERAS_SWITCH, "value": "1"},)


def run_trainer_with(trainer, executor_class, settings: Dict[str, Any]) -> None:
    """Swaps an already-built Trainer's executor for one that runs replicas, adding `settings` to its custom_config.

    The Trainer keeps its spec, inputs and run_fn; only who runs run_fn changes.
    """
    from tfx.dsl.components.base import executor_spec
    from tfx.types import standard_component_specs
    from tfx.utils import json_utils

    key = standard_component_specs.CUSTOM_CONFIG_KEY
    current = json_utils.loads(trainer.exec_properties.get(key) or "null") or {}
    clashes = sorted(set(current) & set(settings))
    if clashes:
        raise ValueError(f"the Trainer's custom_config already has {clashes}")
    trainer.executor_spec = executor_spec.ExecutorClassSpec(executor_class)
    trainer.exec_properties[key] = json_utils.dumps({**current, **settings})


def args(inputs: Dict[str, list], outputs: Dict[str, list], exec_properties: Dict[str, Any]) -> List[str]:
    """run_executor's arguments for TFX artifacts and properties (the form TFX's extension passes a CustomJob)."""
    from tfx.types import artifact_utils

    return [
        "--executor_class_path",
        GENERIC_EXECUTOR,
        "--inputs",
        artifact_utils.jsonify_artifact_dict(inputs),
        "--outputs",
        artifact_utils.jsonify_artifact_dict(outputs),
        "--exec-properties",
        json.dumps(exec_properties, sort_keys=True),
    ]


# What `petseg kubeflow tfjob-manifest` shows where only a run knows the values.
PLACEHOLDER_ARGS = (
    "--executor_class_path",
    GENERIC_EXECUTOR,
    "--inputs",
    "<INPUTS: the Trainer task's input artifacts at their gs:// URIs; set by the task at run time>",
    "--outputs",
    "<OUTPUTS: the Trainer task's output artifacts, moved under <task dir>/tfjob-staging/>",
    "--exec-properties",
    "<EXEC_PROPERTIES: the Trainer's run_fn, train/eval args and custom_config>",
)
