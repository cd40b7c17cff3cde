"""The raw Oxford-IIIT Pet data before TFX reads it: its archive layout, synthetic pets, checks and staging, spans."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
