"""Test helpers that reproduce what a Kubeflow Pipelines cluster does, offline."""
