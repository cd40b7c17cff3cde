"""Kubeflow Pipelines V2 runner, image and scheduling: our portion of the `kubeflow` namespace the Kubeflow SDKs
share."""

import config  # noqa: F401  sets the Keras switch before anything imports TensorFlow

# pkgutil-style, like the `kubeflow/__init__.py` of kubeflow-training's wheel: whichever portion Python
# finds first extends the package over every other `kubeflow/` folder on sys.path, so `kubeflow.training`
# and our modules import side by side (a plain package hides one or the other). A PEP 420 package (no
# `__init__`) would coexist too, but could not set the Keras switch above.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
