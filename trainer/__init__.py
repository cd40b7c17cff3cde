"""VGG16-FCN8 model, input pipeline, run_fn and serving signatures."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
