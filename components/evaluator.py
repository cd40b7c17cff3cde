"""Evaluator: TFX's, judging the candidate alone on a first run and calling the model in batches of a fixed size."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from absl import logging
from tfx import types
from tfx.components.evaluator import component as evaluator_component, executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components import blessed_model, internals


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator with two changes.

    - An empty baseline (LatestBlessedModel before any blessing) is dropped, so TFX skips change
      thresholds as it does without one.
    - The examples reach TFMA in batches of the eval config's `ModelSpec.inference_batch_size`
      (see `internals.evaluator_reads_batches_of`).
    """

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        key = standard_component_specs.BASELINE_MODEL_KEY
        baseline = input_dict.get(key)
        if baseline and not blessed_model.holds_model(baseline[0]):
            logging.info("No blessed baseline yet: judging the candidate on its thresholds alone")
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        batch_size = inference_batch_size(exec_properties.get(standard_component_specs.EVAL_CONFIG_KEY))
        with internals.evaluator_reads_batches_of(batch_size) if batch_size else contextlib.nullcontext():
            super().Do(input_dict, output_dict, exec_properties)


def inference_batch_size(eval_config_json: Optional[str]) -> Optional[int]:
    """The model specs' `inference_batch_size` (one value, or None when unset); specs that disagree are an error."""
    if not eval_config_json:
        return None
    eval_config = proto_utils.json_to_proto(eval_config_json, tfma.EvalConfig())
    sizes = {spec.inference_batch_size for spec in eval_config.model_specs if spec.inference_batch_size}
    if len(sizes) > 1:
        raise ValueError(
            f"model_specs ask for different inference_batch_size values {sorted(sizes)}; "
            "the candidate and the baseline read the same batches, so give them one"
        )
    return sizes.pop() if sizes else None


class Evaluator(evaluator_component.Evaluator):
    """Drop-in for `tfx.components.Evaluator`: the baseline may be LatestBlessedModel's empty output; fixed batches."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
