"""kubeflow.entrypoint: open-source KFP launcher input adapted for TFX's executor runner; Vertex input untouched."""

import json

import pytest

from kubeflow import entrypoint

MODEL_TYPE = {"instanceSchema": "title: tfx.Model\ntype: object\n"}
INPUTS_SPEC = {"artifacts": {"model": {"artifactType": MODEL_TYPE}}}


def executor_input(output_file, model_uri, model_type):
    return {
        "inputs": {
            "artifacts": {
                "model": {
                    "artifacts": [
                        {"name": "17", "uri": model_uri, "type": model_type, "metadata": {"display_name": "model"}}
                    ]
                }
            },
            "parameterValues": {"serving_dir": "gs://models/petseg"},
        },
        "outputs": {
            "artifacts": {
                "blessing": {
                    "artifacts": [
                        {
                            "uri": model_uri.replace("Trainer", "Evaluator") + "-blessing",
                            "type": {"instanceSchema": "title: tfx.ModelBlessing\ntype: object\n"},
                        }
                    ]
                },
                "executor-logs": {
                    "artifacts": [
                        {
                            "uri": "minio://mlpipeline/v2/artifacts/p/r/Evaluator/u/executor-logs",
                            "type": {"schemaTitle": "system.Artifact"},
                        }
                    ]
                },
            },
            "outputFile": output_file,
        },
    }


def argv(payload):
    return [
        "--executor_class_path",
        "components.evaluator.Executor",
        "--json_serialized_invocation_args",
        json.dumps(payload),
        "--json_serialized_inputs_spec_args",
        json.dumps(INPUTS_SPEC),
        "--runner=DirectRunner",
    ]


def test_open_source_input_is_typed_mirrored_and_left_without_the_launchers_outputs(tmp_path):
    uri = "minio://mlpipeline/v2/artifacts/petseg/run-1/Trainer/uuid/model"
    payload = executor_input(f"{tmp_path}/tmp/kfp_outputs/output_metadata.json", uri, {"instanceSchema": ""})
    tfx_argv, mirror, adapted = entrypoint.prepare(argv(payload) + [f"--kfp_local_root={tmp_path}"])
    [model] = adapted["inputs"]["artifacts"]["model"]["artifacts"]
    assert model["type"] == MODEL_TYPE
    assert model["uri"] == f"{tmp_path}/minio/mlpipeline/v2/artifacts/petseg/run-1/Trainer/uuid/model"
    assert set(adapted["outputs"]["artifacts"]) == {"blessing"}
    # Paths that are no artifacts (exec properties) are the executor's own business.
    assert adapted["inputs"]["parameterValues"] == {"serving_dir": "gs://models/petseg"}
    # TFX's parser sees exactly what it always saw, plus the beam args; our flag is gone.
    assert tfx_argv[tfx_argv.index("--json_serialized_invocation_args") + 1] == json.dumps(adapted)
    assert tfx_argv[-1] == "--runner=DirectRunner" and not any("kfp_local_root" in a for a in tfx_argv)
    assert mirror.remote(model["uri"]) == uri


def test_the_launchers_output_file_marks_open_source_input_in_a_pod_and_under_a_pod_root(tmp_path):
    uri = "minio://mlpipeline/v2/artifacts/petseg/run-1/Trainer/uuid/model"
    # In a pod: the launcher's fixed path, and no --kfp_local_root.
    in_pod = executor_input("/tmp/kfp_outputs/output_metadata.json", uri, {"instanceSchema": ""})
    _, mirror, adapted = entrypoint.prepare(argv(in_pod))
    assert mirror.root == "/" and adapted["inputs"]["artifacts"]["model"]["artifacts"][0]["uri"] == (
        "/minio/mlpipeline/v2/artifacts/petseg/run-1/Trainer/uuid/model"
    )
    # The same file under an emulated pod root (a test's own folder, never the machine-wide one) counts too.
    assert entrypoint.from_open_source_launcher(
        executor_input(f"{tmp_path}/tmp/kfp_outputs/output_metadata.json", uri, {})
    )
    for other in (
        "/gcs/bucket/root/123/Evaluator_456/executor_output.json",
        "/tmp/kfp_outputs/executor_output.json",
        f"{tmp_path}/output_metadata.json",
    ):
        assert not entrypoint.from_open_source_launcher(executor_input(other, uri, MODEL_TYPE)), other


def test_vertex_input_passes_unchanged():
    payload = executor_input(
        "gs://bucket/root/123/Evaluator_456/executor_output.json", "gs://bucket/root/123/Trainer_789/model", MODEL_TYPE
    )
    payload["outputs"]["artifacts"].pop("executor-logs")
    tfx_argv, mirror, adapted = entrypoint.prepare(argv(payload))
    assert mirror is None and adapted == payload
    assert tfx_argv[tfx_argv.index("--json_serialized_invocation_args") + 1] == json.dumps(payload)


@pytest.mark.parametrize(
    "uri, local",
    [
        ("gs://b/root/x", "/gcs/b/root/x"),
        ("minio://mlpipeline/v2/artifacts/x", "/minio/mlpipeline/v2/artifacts/x"),
        ("s3://b/x", "/s3/b/x"),
        ("/mnt/models/x", "/mnt/models/x"),
    ],
)
def test_mirror_paths_are_the_launchers_and_map_back(uri, local):
    mirror = entrypoint.Mirror("/")
    assert mirror.local(uri) == local
    assert mirror.remote(local) == uri


def test_output_file_goes_back_with_remote_uris_in_artifacts_and_their_metadata(tmp_path):
    mirror = entrypoint.Mirror(str(tmp_path))
    output = tmp_path / "output_metadata.json"
    output.write_text(
        json.dumps(
            {
                "artifacts": {
                    "blessing": {
                        "artifacts": [
                            {
                                "uri": f"{tmp_path}/minio/b/Evaluator/u/blessing",
                                "metadata": {
                                    "blessed": 1,
                                    "current_model_uri": f"{tmp_path}/gcs/b/Trainer/u/model",
                                    "name": "x",
                                },
                            }
                        ]
                    }
                }
            }
        )
    )
    mirror.restore_output_file(str(output))
    [blessing] = json.loads(output.read_text())["artifacts"]["blessing"]["artifacts"]
    assert blessing["uri"] == "minio://b/Evaluator/u/blessing"
    assert blessing["metadata"] == {"blessed": 1, "current_model_uri": "gs://b/Trainer/u/model", "name": "x"}


def test_an_untyped_input_the_task_does_not_declare_is_an_error():
    payload = executor_input(entrypoint.OPEN_SOURCE_OUTPUT_FILE, "minio://b/m", {"instanceSchema": ""})
    with pytest.raises(ValueError, match="input artifact 'model' has no type"):
        entrypoint.fill_types(payload, {"artifacts": {}})
