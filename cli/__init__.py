"""The `petseg` command line: the top layer, which runs the pipeline, writes reports and drives clusters."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
