"""Shared test set-up: Keras 2 for TFT/TFMA, and one real tiny run for the dashboard tests."""

import config  # noqa: F401  the Keras switch, before any test module imports TensorFlow

import os
import pathlib

import pytest

from support import drift_scenario, petseg
from support.kube_trainer import cluster  # noqa: F401  the loopback Kubernetes of the `kube` tests, once per session


def pytest_collection_modifyitems(items):
    for item in items:
        # Whole pipeline runs, shared by their users.
        if {"tiny_run", "spans_scenario"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    """One real `petseg run --profile tiny` output, shared by the dashboard and notebook tests.

    PETSEG_TEST_RUN=DIR reuses an earlier tiny run's output (a run takes minutes on a busy machine).
    """
    if os.environ.get("PETSEG_TEST_RUN"):
        return pathlib.Path(os.environ["PETSEG_TEST_RUN"]).resolve()
    output = tmp_path_factory.mktemp("tiny_run")
    petseg.run(output, "--profile", "tiny")
    return output


@pytest.fixture(scope="session")
def spans_scenario(tmp_path_factory) -> drift_scenario.Scenario:
    """Seven real `petseg run`s on five synthetic spans into one output (support/drift_scenario.py), shared by the
    drift tests and the dashboard's drift and history views."""
    return drift_scenario.build(tmp_path_factory.mktemp("spans"))
