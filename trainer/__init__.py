"""VGG16-FCN8 model, input pipeline, run_fn and serving signatures."""

import os

# TFT and TFMA are Keras-2 code: this must be set before TensorFlow is first imported, in every
# process that imports our code (CLI, tests, Beam workers, Kubeflow containers).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
