"""Shared names and the typed configuration: the bottom layer, which imports no other project package.

It also holds the project's one Keras switch: TFT and TFMA are Keras-2 code, so `TF_USE_LEGACY_KERAS`
must be set before TensorFlow is first imported. Every other package's `__init__` imports this one
first, so whatever process imports our code (petseg, bench, the Kubeflow entrypoint, a Beam worker, a
notebook) sets it in time, and its child processes inherit it.
"""

import os

KERAS_SWITCH = "TF_USE_LEGACY_KERAS"
os.environ.setdefault(KERAS_SWITCH, "1")
