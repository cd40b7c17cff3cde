"""Kubeflow Pipelines V2 runner, image and scheduling."""

import transform  # noqa: F401  sets the Keras switch before anything imports TensorFlow
