"""One reader of a run's MLMD: each node's executions, their artifacts as TFX Artifacts, and their times."""

from __future__ import annotations

import pathlib
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import constants
from tfx.types import Artifact, artifact_utils, standard_artifacts  # noqa: F401  (registers the types artifacts load as)

from config.settings import PipelineConfig

Execution = metadata_store_pb2.Execution
Event = metadata_store_pb2.Event
# Outputs count only from executions that finished: a killed or failed attempt leaves none worth reading.
_FINISHED = (Execution.COMPLETE, Execution.CACHED)


class RunArtifacts:
    """The MLMD store of one `petseg run --output-dir` folder (`metadata.sqlite`), for one pipeline name.

    Read through ml_metadata's own MetadataStore, read-only: TFX's contexts (`node`, `pipeline_run`)
    group the executions, events link them to their artifacts by key, and TFX's public
    `artifact_utils.deserialize_artifact` turns those into TFX Artifacts.
    """

    def __init__(self, metadata_path: str, pipeline_name: str = PipelineConfig.name):
        if not pathlib.Path(metadata_path).exists():  # MLMD would create an empty store and find nothing
            raise FileNotFoundError(f"{metadata_path}: no metadata store (is this a `petseg run` output?)")
        connection = metadata_store_pb2.ConnectionConfig()
        connection.sqlite.filename_uri = metadata_path
        connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        self.store = metadata_store.MetadataStore(connection)
        self.pipeline = pipeline_name
        self._types: Dict[int, metadata_store_pb2.ArtifactType] = {}

    def outputs(self, node_id: str, key: str, pipeline_run_id: Optional[str] = None) -> List[Artifact]:
        """`key`'s artifacts from the node's latest finished execution (a cached one links earlier artifacts).

        With `pipeline_run_id`, only an execution of that run counts: a run that stopped early has none
        of its later nodes, whatever earlier runs left.
        """
        finished = [e for e in self.executions(node_id, pipeline_run_id) if e.last_known_state in _FINISHED]
        return self.outputs_of(finished[-1], key) if finished else []

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
        executions = self._executions(constants.NODE_CONTEXT_TYPE_NAME, f"{self.pipeline}.{node_id}")
        if pipeline_run_id is not None:
            in_run = {e.id for e in self._executions(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME, pipeline_run_id)}
            executions = [e for e in executions if e.id in in_run]
        return sorted(executions, key=lambda e: e.id)

    def inputs_of(self, execution: Execution, key: str) -> List[Artifact]:
        return self._linked(execution, Event.INPUT, key)

    def outputs_of(self, execution: Execution, key: str) -> List[Artifact]:
        return self._linked(execution, Event.OUTPUT, key)

    def contexts(self, type_name: str) -> List[metadata_store_pb2.Context]:
        return list(self.store.get_contexts_by_type(type_name))

    def _executions(self, context_type: str, name: str) -> List[Execution]:
        context = self.store.get_context_by_type_and_name(context_type, name)
        return list(self.store.get_executions_by_context(context.id)) if context else []

    def _linked(self, execution: Execution, event_type: int, key: str) -> List[Artifact]:
        """The artifacts an execution's events of `event_type` link under `key`, in their list order."""
        events = sorted(
            (
                e
                for e in self.store.get_events_by_execution_ids([execution.id])
                if e.type == event_type and e.path.steps and e.path.steps[0].key == key
            ),
            key=lambda e: e.path.steps[1].index if len(e.path.steps) > 1 else 0,
        )
        if not events:
            return []
        found = {a.id: a for a in self.store.get_artifacts_by_id([e.artifact_id for e in events])}
        return [
            artifact_utils.deserialize_artifact(self._type(found[e.artifact_id].type_id), found[e.artifact_id])
            for e in events
        ]

    def _type(self, type_id: int) -> metadata_store_pb2.ArtifactType:
        if type_id not in self._types:
            self._types[type_id] = self.store.get_artifact_types_by_id([type_id])[0]
        return self._types[type_id]

    def node_ids(self) -> List[str]:
        prefix = f"{self.pipeline}."
        return [
            c.name[len(prefix) :]
            for c in self.store.get_contexts_by_type(constants.NODE_CONTEXT_TYPE_NAME)
            if c.name.startswith(prefix)
        ]

    def latest_run_id(self) -> Optional[str]:
        """The pipeline run of this pipeline's newest execution (each execution belongs to one run)."""
        newest = max(
            (e for node in self.node_ids() for e in self.executions(node)[-1:]), key=lambda e: e.id, default=None
        )
        if newest is None:
            return None
        run_type = self.store.get_context_type(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME)
        return next((c.name for c in self.store.get_contexts_by_execution(newest.id) if c.type_id == run_type.id), None)

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
        return {
            node: {
                "seconds": round((e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000, 2),
                "cached": e.last_known_state == Execution.CACHED,
            }
            for node, e in sorted(latest.items(), key=lambda item: (item[1].create_time_since_epoch, item[1].id))
        }

    def close(self) -> None:
        """Nothing to release: the store closes its connection when it is collected."""

    def __enter__(self) -> "RunArtifacts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
