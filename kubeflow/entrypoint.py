"""Task entrypoint: TFX's Kubeflow V2 executor runner, made to run under open-source KFP's launcher as on Vertex."""

# Open-source KFP's launcher hands the task an ExecutorInput that TFX's own entrypoint
# (tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor) cannot run as it is:
#  - upstream artifacts come with an empty `type.instanceSchema` (the launcher keeps no schema in
#    its metadata store), and TFX needs the schema's title to pick the artifact class;
#  - it adds outputs of its own, typed `system.Artifact` (the task's log, `executor-logs`), whose
#    class TFX cannot import;
#  - artifact URIs are minio://, s3:// or gs:// under the pipeline root. The launcher downloads
#    every input to a local mirror (/minio/..., /s3/..., /gcs/...) before the command and uploads
#    every output from there after it; tf.io.gfile cannot open minio:// or s3:// at all, and TF
#    writing gs:// itself leaves zero-byte "dir/" marker objects that break the launcher's later
#    downloads (kubeflow/pipelines#13476).
# So on that launcher, missing schemas are filled from the task's own input spec, the launcher's
# own outputs are left to the launcher, the executor
# reads and writes the local mirror, and output_metadata.json keeps the original URIs (the
# launcher records and uploads whatever URI it finds there). Vertex's input passes unchanged.

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Tuple

from pipeline import gc_tuning

# Open-source KFP's launcher always asks for the executor output here, under the pod's root
# (launcher_v2.go, OutputMetadataFilepath); Vertex names a file under the pipeline root.
OPEN_SOURCE_OUTPUT_FILE = "/tmp/kfp_outputs/output_metadata.json"
# Remote scheme -> the launcher's local mirror folder for it (launcher_v2.go, LocalPathForURI).
MIRRORS = {"gs://": "gcs", "minio://": "minio", "s3://": "s3"}


def from_open_source_launcher(executor_input: Dict[str, Any]) -> bool:
    """Whether the output file is the open-source launcher's: its path in a pod, or under an emulated pod root."""
    return str(executor_input.get("outputs", {}).get("outputFile", "")).endswith(OPEN_SOURCE_OUTPUT_FILE)


def fill_types(executor_input: Dict[str, Any], inputs_spec: Dict[str, Any]) -> List[str]:
    """Gives input artifacts without a schema the type the task's input spec declares; returns their keys."""
    declared = inputs_spec.get("artifacts", {})
    filled = []
    for key, artifact_list in executor_input.get("inputs", {}).get("artifacts", {}).items():
        for artifact in artifact_list.get("artifacts", []):
            artifact_type = artifact.get("type") or {}
            if artifact_type.get("schemaTitle") or artifact_type.get("instanceSchema"):
                continue
            if key not in declared:
                raise ValueError(f"input artifact {key!r} has no type and the task declares no input {key!r}")
            artifact["type"] = dict(declared[key]["artifactType"])
            filled.append(key)
    return filled


def drop_launcher_outputs(executor_input: Dict[str, Any]) -> List[str]:
    """Removes the outputs the launcher itself writes (KFP `system.*` types); returns their keys."""
    outputs = executor_input.get("outputs", {}).get("artifacts", {})
    own = [
        key
        for key, artifact_list in outputs.items()
        if any(
            (a.get("type") or {}).get("schemaTitle", "").startswith("system.")
            for a in artifact_list.get("artifacts", [])
        )
    ]
    for key in own:
        del outputs[key]
    return own


class Mirror:
    """Maps remote artifact URIs to the launcher's local mirror under `root` ("/" in a pod) and back."""

    def __init__(self, root: str = "/"):
        self.root = root

    def local(self, uri: str) -> str:
        for scheme, folder in MIRRORS.items():
            if uri.startswith(scheme):
                return os.path.join(self.root, folder, uri[len(scheme) :])
        return uri

    def remote(self, path: str) -> str:
        for scheme, folder in MIRRORS.items():
            prefix = os.path.join(self.root, folder) + "/"
            if path.startswith(prefix):
                return scheme + path[len(prefix) :]
        return path

    def to_local(self, executor_input: Dict[str, Any]) -> Dict[str, Any]:
        for side in ("inputs", "outputs"):
            for artifact_list in executor_input.get(side, {}).get("artifacts", {}).values():
                for artifact in artifact_list.get("artifacts", []):
                    artifact["uri"] = self.local(artifact["uri"])
        return executor_input

    def restore_output_file(self, output_file: str) -> None:
        """Rewrites the executor's output_metadata.json with the remote URIs the launcher uploads to."""
        with open(output_file) as stream:
            output = json.load(stream)
        for artifact_list in output.get("artifacts", {}).values():
            for artifact in artifact_list.get("artifacts", []):
                if "uri" in artifact:
                    artifact["uri"] = self.remote(artifact["uri"])
                # e.g. the blessing's current_model_uri / baseline_model_uri name other artifacts.
                metadata = artifact.get("metadata", {})
                for key, value in metadata.items():
                    if isinstance(value, str):
                        metadata[key] = self.remote(value)
        with open(output_file, "w") as stream:
            json.dump(output, stream)


def _split_flags(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    # The pod's root, where the launcher's mirror folders and its output file live: "/" in a pod;
    # a test emulating the launcher points it at a temporary folder per task.
    parser.add_argument("--kfp_local_root", default="/")
    parser.add_argument("--json_serialized_invocation_args", required=True)
    parser.add_argument("--json_serialized_inputs_spec_args", default="")
    return parser.parse_known_args(argv)


def prepare(argv: List[str]) -> Tuple[List[str], "Mirror | None", Dict[str, Any]]:
    """TFX's entrypoint arguments for this task, the mirror to undo afterwards (or None), the ExecutorInput."""
    ours, rest = _split_flags(argv)
    executor_input = json.loads(ours.json_serialized_invocation_args)
    mirror = None
    if from_open_source_launcher(executor_input):
        fill_types(executor_input, json.loads(ours.json_serialized_inputs_spec_args or "{}"))
        drop_launcher_outputs(executor_input)
        mirror = Mirror(ours.kfp_local_root)
        mirror.to_local(executor_input)
    args = ["--json_serialized_invocation_args", json.dumps(executor_input)]
    if ours.json_serialized_inputs_spec_args:
        args += ["--json_serialized_inputs_spec_args", ours.json_serialized_inputs_spec_args]
    return args + rest, mirror, executor_input


# The launcher's mirror of the task this process runs (None for Vertex-shaped input), for an executor that
# hands artifact URIs to other pods (kubeflow/tfjob_executor.py).
_active_mirror: "Mirror | None" = None


def active_mirror() -> "Mirror | None":
    return _active_mirror


def _main(parsed: Tuple[argparse.Namespace, List[str]]) -> None:
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

    global _active_mirror
    args, beam_args, mirror, executor_input = parsed
    _active_mirror = mirror
    kubeflow_v2_run_executor.main((args, beam_args))
    if mirror is not None:
        mirror.restore_output_file(executor_input["outputs"]["outputFile"])
    gc_tuning.skip_final_collection()


def _parse(argv: List[str]):
    with gc_tuning.heavy_imports():
        from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor  # noqa: F401

        from components import internals

    tfx_argv, mirror, executor_input = prepare(argv[1:])
    # Given argv as absl gives it, so Beam args split as in TFX.
    args, beam_args = internals.parse_kubeflow_v2_executor_flags(argv[:1] + tfx_argv)
    return args, beam_args, mirror, executor_input


if __name__ == "__main__":
    from absl import app

    app.run(_main, flags_parser=_parse)
