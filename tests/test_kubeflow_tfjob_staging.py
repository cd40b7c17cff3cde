"""Staging the Trainer's outputs for a TFJob's replicas (kubeflow/staging.py) under open-source KFP's launcher."""

import pytest
from tfx.types import standard_artifacts

from kubeflow import staging
from kubeflow.entrypoint import Mirror


def test_under_the_open_source_launcher_replicas_get_bucket_uris_and_outputs_come_back_to_the_mirror():
    task = "bucket/root/petseg/run-1/Trainer/abc"
    examples, model = standard_artifacts.Examples(), standard_artifacts.Model()
    examples.uri = "/pod/gcs/bucket/root/petseg/run-1/Transform/x/transformed_examples"
    model.uri = f"/pod/gcs/{task}/model"
    p = staging.plan({"examples": [examples]}, {"model": [model]}, Mirror("/pod"))
    assert p.inputs["examples"][0].uri == "gs://bucket/root/petseg/run-1/Transform/x/transformed_examples"
    assert p.outputs["model"][0].uri == f"gs://{task}/tfjob-staging/model"
    assert p.copies == [(f"gs://{task}/tfjob-staging/model", f"/pod/gcs/{task}/model")]
    assert p.name == staging.job_name([f"gs://{task}/model"])
    assert model.uri == f"/pod/gcs/{task}/model"  # the task's own artifacts stay where the launcher put them
    examples.uri = "/pod/minio/mlpipeline/v2/artifacts/x"
    with pytest.raises(staging.StagingError, match="TensorFlow cannot open minio:// or s3://"):
        staging.plan({"examples": [examples]}, {"model": [model]}, Mirror("/pod"))
