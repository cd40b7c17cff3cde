"""Pipeline definition, configuration, local runner and CLI."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
