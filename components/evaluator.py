"""Evaluator: TFX's, judging the candidate alone on a first run and calling the model in batches of a fixed size."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional

import tensorflow_model_analysis as tfma
from absl import logging
from tfx import types
from tfx.components.evaluator import component as evaluator_component
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.util import tfxio_utils
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components import blessed_model


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator with two changes.

    - An empty baseline (LatestBlessedModel before any blessing) is dropped, so TFX skips change
      thresholds as it does without one.
    - The examples reach TFMA in batches of the eval config's `ModelSpec.inference_batch_size`.
      TFX's `tfxio.BeamSource()` takes no size, and Beam's adaptive batching then starts at one
      example and grows: every new batch shape costs the model a slower call (bench/README.md).
      TFX reads the factory by its module-level name inside `Do` and offers no other hook, so the
      name points at a wrapper for the duration of the call.
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        key = standard_component_specs.BASELINE_MODEL_KEY
        baseline = input_dict.get(key)
        if baseline and not blessed_model.holds_model(baseline[0]):
            logging.info("No blessed baseline yet: judging the candidate on its thresholds alone")
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        batch_size = inference_batch_size(exec_properties.get(standard_component_specs.EVAL_CONFIG_KEY))
        evaluator_executor.tfxio_utils = BatchedTfxioUtils(batch_size) if batch_size else tfxio_utils
        try:
            super().Do(input_dict, output_dict, exec_properties)
        finally:
            evaluator_executor.tfxio_utils = tfxio_utils


def inference_batch_size(eval_config_json: Optional[str]) -> Optional[int]:
    """The model specs' `inference_batch_size` (one value, or None when unset); specs that disagree are an error."""
    if not eval_config_json:
        return None
    eval_config = proto_utils.json_to_proto(eval_config_json, tfma.EvalConfig())
    sizes = {spec.inference_batch_size for spec in eval_config.model_specs if spec.inference_batch_size}
    if len(sizes) > 1:
        raise ValueError(f"model_specs ask for different inference_batch_size values {sorted(sizes)}; "
                         "the candidate and the baseline read the same batches, so give them one")
    return sizes.pop() if sizes else None


class BatchedTfxioUtils:
    """`tfx.components.util.tfxio_utils` whose TFXIOs batch their Beam source at `batch_size`."""

    def __init__(self, batch_size: int):
        self._batch_size = batch_size

    def __getattr__(self, name: str) -> Any:
        return getattr(tfxio_utils, name)

    def get_tfxio_factory_from_artifact(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        factory = tfxio_utils.get_tfxio_factory_from_artifact(*args, **kwargs)

        def batched(file_pattern: Any) -> Any:
            tfxio = factory(file_pattern)
            tfxio.BeamSource = functools.partial(tfxio.BeamSource, batch_size=self._batch_size)
            return tfxio

        return batched


class Evaluator(evaluator_component.Evaluator):
    """Drop-in for `tfx.components.Evaluator`: baseline may be LatestBlessedModel's empty output; fixed model batches."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
