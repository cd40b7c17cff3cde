"""What is read after a run: MLMD artifacts and timings, TFMA results, summary.json, mask images, the dashboard."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow
