"""Per-class IoU and Dice for TFMA, and the Evaluator's config: slices and the blessing gate."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
