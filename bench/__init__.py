"""Benchmarks of each pipeline stage as a ratio to what this machine can do, measured in the same run."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
