"""Distributed Beam engines: the config-to-args translation and a local Flink cluster."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
