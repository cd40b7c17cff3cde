"""Custom TFX components and the user code they load."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
