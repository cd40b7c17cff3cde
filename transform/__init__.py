"""Feature keys and the Transform preprocessing_fn.

This package also holds the project's one Keras switch: TFT and TFMA are Keras-2 code, so
`TF_USE_LEGACY_KERAS` must be set before TensorFlow is first imported. Every other package's
`__init__` imports this one first, so whatever process imports our code (petseg, bench, the
Kubeflow entrypoint, a Beam worker, a notebook) sets it in time, and its child processes inherit it.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
