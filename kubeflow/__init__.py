"""Kubeflow Pipelines V2 runner, image and scheduling."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
