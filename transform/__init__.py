"""Feature keys and the Transform preprocessing_fn."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
