"""Names that several layers must agree on: pipeline node ids and the exported model's signature names."""

# Node ids: MLMD, the run summary, the dashboard, the Kubeflow spec and the bench look nodes up by these.
EXAMPLE_GEN_ID = "TfdsExampleGen"
SCHEMA_GEN_ID = "ImportSchemaGen"
STATISTICS_GEN_ID = "StatisticsGen"
EXAMPLE_VALIDATOR_ID = "ExampleValidator"
VALIDATION_GATE_ID = "ValidationGate"
DRIFT_VALIDATOR_ID = "DistributionValidator"
DRIFT_GATE_ID = "DriftGate"
TRANSFORM_ID = "Transform"
LATEST_BLESSED_MODEL_ID = "LatestBlessedModel"
TRAINER_ID = "Trainer"
EVALUATOR_ID = "Evaluator"
PUSHER_ID = "Pusher"

# Signatures of the exported model: TF Serving calls the first, TFMA the other two.
SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "serving_examples"
TRANSFORM_SIGNATURE = "transform_features"

# The PushedModel's custom properties as TFX's own Pusher records them; our Pusher, the served model's
# artifacts and the run's summary and history use the same names.
PUSHED, PUSHED_DESTINATION, PUSHED_VERSION = "pushed", "pushed_destination", "pushed_version"
