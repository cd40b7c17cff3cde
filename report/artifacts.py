"""One reader of a run's MLMD: each node's executions, their artifacts as TFX Artifacts, and their times."""

from __future__ import annotations

import pathlib
from typing import Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import constants
from tfx.orchestration import metadata
from tfx.orchestration.portable.mlmd import artifact_lib, execution_lib, store_ext
from tfx.types import Artifact, standard_artifacts  # noqa: F401  (registers the types artifacts load as)

from config.settings import PipelineConfig

Execution = metadata_store_pb2.Execution
# Outputs count only from executions that finished: a killed or failed attempt leaves none worth reading.
_FINISHED = (Execution.COMPLETE, Execution.CACHED)


class RunArtifacts:
    """The MLMD store of one `petseg run --output-dir` folder (`metadata.sqlite`), for one pipeline name."""

    def __init__(self, metadata_path: str, pipeline_name: str = PipelineConfig.name):
        if not pathlib.Path(metadata_path).exists():  # MLMD would create an empty store and find nothing
            raise FileNotFoundError(f"{metadata_path}: no metadata store (is this a `petseg run` output?)")
        self._handle = metadata.Metadata(metadata.sqlite_metadata_connection_config(metadata_path))
        self._handle.__enter__()  # opens the connection; the store closes with the object
        self.store = self._handle.store
        self.pipeline = pipeline_name

    def outputs(self, node_id: str, key: str, pipeline_run_id: Optional[str] = None) -> List[Artifact]:
        """`key`'s artifacts from the node's latest finished execution (a cached one reuses earlier artifacts).

        With `pipeline_run_id`, only an execution of that run counts: a run that stopped early has none
        of its later nodes, whatever earlier runs left.
        """
        if pipeline_run_id is not None:
            finished = [e for e in self.executions(node_id, pipeline_run_id) if e.last_known_state in _FINISHED]
            return self.outputs_of(finished[-1], key) if finished else []
        by_key = store_ext.get_live_output_artifacts_of_node_by_output_key(
            self.store, pipeline_id=self.pipeline, node_id=node_id, execution_states=_FINISHED)
        latest = next(iter(by_key.get(key, [])), [])  # newest execution first
        return list(artifact_lib.get_artifacts_by_ids(self._handle, [a.id for a in latest]))

    def one(self, node_id: str, key: str, pipeline_run_id: Optional[str] = None) -> Optional[Artifact]:
        found = self.outputs(node_id, key, pipeline_run_id)
        return found[0] if found else None

    def get(self, node_id: str, key: str) -> Artifact:
        """`one`, for callers that cannot go on without the artifact."""
        found = self.one(node_id, key)
        if found is None:
            raise LookupError(f"the pipeline run has no {node_id}.{key} artifact")
        return found

    def executions(self, node_id: str, pipeline_run_id: Optional[str] = None) -> List[Execution]:
        """The node's executions, oldest first; only those of one pipeline run if `pipeline_run_id` is given."""
        return list(store_ext.get_node_executions(
            self.store, pipeline_id=self.pipeline, node_id=node_id, pipeline_run_id=pipeline_run_id))

    def inputs_of(self, execution: Execution, key: str) -> List[Artifact]:
        return list(execution_lib.get_input_artifacts(self._handle, execution.id).get(key, []))

    def outputs_of(self, execution: Execution, key: str) -> List[Artifact]:
        return list(execution_lib.get_output_artifacts(self._handle, execution.id).get(key, []))

    def node_ids(self) -> List[str]:
        prefix = f"{self.pipeline}."
        return [c.name[len(prefix):] for c in self.store.get_contexts_by_type(constants.NODE_CONTEXT_TYPE_NAME)
                if c.name.startswith(prefix)]

    def latest_run_id(self) -> Optional[str]:
        """The pipeline run of this pipeline's newest execution (each execution belongs to one run)."""
        newest = max((e for node in self.node_ids() for e in self.executions(node)[-1:]),
                     key=lambda e: e.id, default=None)
        if newest is None:
            return None
        run_type = self.store.get_context_type(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME)
        return next((c.name for c in self.store.get_contexts_by_execution(newest.id) if c.type_id == run_type.id),
                    None)

    def component_times(self) -> Dict[str, Dict[str, object]]:
        """{node: {"seconds", "cached"}} of the latest pipeline run, in the order the nodes started.

        MLMD stamps an execution when the launcher registers it and again when it publishes the
        outputs, so the difference is the component's time including the driver and the publish.
        """
        run_id = self.latest_run_id()
        if run_id is None:
            return {}
        latest = {}
        for node in self.node_ids():
            executions = self.executions(node, run_id)
            if executions:
                latest[node] = executions[-1]
        return {node: {"seconds": round((e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000, 2),
                       "cached": e.last_known_state == Execution.CACHED}
                for node, e in sorted(latest.items(), key=lambda item: (item[1].create_time_since_epoch, item[1].id))}

    def close(self) -> None:
        self._handle.__exit__(None, None, None)

    def __enter__(self) -> "RunArtifacts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
