"""Evaluator: TFX's, judging the candidate alone when the baseline Model holds no SavedModel (first run)."""

from __future__ import annotations

from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.evaluator import component as evaluator_component
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_component_specs

from components import blessed_model


class Executor(evaluator_executor.Executor):
    """Drops an empty baseline, so TFX's Evaluator skips change thresholds as it does without one."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        key = standard_component_specs.BASELINE_MODEL_KEY
        baseline = input_dict.get(key)
        if baseline and not blessed_model.holds_model(baseline[0]):
            logging.info("No blessed baseline yet: judging the candidate on its thresholds alone")
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        super().Do(input_dict, output_dict, exec_properties)


class Evaluator(evaluator_component.Evaluator):
    """Drop-in for `tfx.components.Evaluator` whose baseline may be LatestBlessedModel's empty output."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
