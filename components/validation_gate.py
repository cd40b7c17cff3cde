"""ValidationGate: fails the run when ExampleValidator found any anomaly, so Transform never sees bad data."""

import os
from typing import Dict, List, Mapping

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils

# ExampleValidator writes one binary Anomalies proto per split.
ANOMALIES_FILE = "SchemaDiff.pb"


class AnomaliesFoundError(RuntimeError):
    """ExampleValidator reported anomalies; the message lists them by split and feature."""


def load_anomalies(anomalies: standard_artifacts.ExampleAnomalies) -> Dict[str, anomalies_pb2.Anomalies]:
    """Reads ExampleValidator's output for every split of `anomalies`: split name -> Anomalies proto.

    Raises FileNotFoundError when a split's file is missing: an unreadable verdict must not pass.
    """
    by_split = {}
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        split_dir = artifact_utils.get_split_uri([anomalies], split)
        path = os.path.join(split_dir, ANOMALIES_FILE)
        if not fileio.exists(path):
            raise FileNotFoundError(
                f"no {ANOMALIES_FILE} for split {split!r} in {split_dir}; is this the output of ExampleValidator?"
            )
        by_split[split] = anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(path))
    return by_split


def describe_anomalies(by_split: Mapping[str, anomalies_pb2.Anomalies]) -> str:
    """A readable multi-line report of every anomaly, one line per split and feature; "" if none."""
    lines: List[str] = []
    for split in sorted(by_split):
        proto = by_split[split]
        if proto.data_missing:
            lines.append(f"  split {split!r}: no data")
        if proto.HasField("dataset_anomaly_info"):
            lines.append(f"  split {split!r}, dataset: {_describe(proto.dataset_anomaly_info)}")
        for feature in sorted(proto.anomaly_info):
            lines.append(f"  split {split!r}, feature {feature!r}: {_describe(proto.anomaly_info[feature])}")
    if not lines:
        return ""
    return "\n".join(
        [
            "ExampleValidator found anomalies; stopping before Transform:",
            *lines,
            "Fix the data, or update transform/schema.pbtxt if the data is right.",
        ]
    )


def _describe(info: anomalies_pb2.AnomalyInfo) -> str:
    # Short descriptions alone can say just "Multiple errors"; the reasons carry the specifics.
    details = [reason.description or reason.short_description for reason in info.reason]
    details = [d for d in details if d and d != info.short_description]
    summary = info.short_description or info.description or "anomaly"
    return f"{summary} ({'; '.join(details)})" if details else summary


@component
def ValidationGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Raises AnomaliesFoundError listing every anomaly; succeeds silently on clean data.

    Wire it as `transform.add_upstream_node(ValidationGate(anomalies=example_validator.outputs['anomalies']))`.
    """
    message = describe_anomalies(load_anomalies(anomalies))
    if message:
        raise AnomaliesFoundError(message)
