"""Model bytes on disk: the served model against its weights, and the model bytes each run writes."""

from __future__ import annotations

import os
import pathlib
from typing import Dict, Iterable, List, Optional, Set, Tuple

from config import names

# Where a run keeps SavedModels of the segmentation model, in the order their bytes come to exist: the
# Trainer exports, the Pusher places that export under serving/ (and may keep an artifact of its own),
# and the next run's LatestBlessedModel places the served version in its artifact.
MODEL_PLACES = (names.TRAINER_ID, names.PUSHER_ID, "serving", names.LATEST_BLESSED_MODEL_ID)
SAVED_MODEL_FILE = "saved_model.pb"

# A file's identity: a hard link is another name for the same (device, inode) and writes no bytes.
Inode = Tuple[int, int]


def folder_bytes(folder: str) -> int:
    """Bytes of every file under `folder` (each name counted, as `du --count-links` would)."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(folder) for name in files)


def weight_bytes(model) -> Tuple[int, int]:
    """(parameters, bytes) of a Keras model's weights, each at its own dtype's width."""
    params = bytes_ = 0
    for weight in model.weights:
        count = int(weight.shape.num_elements())
        params += count
        bytes_ += count * weight.dtype.size
    return params, bytes_


def stored_values(variables_prefix: str) -> Dict[str, Dict[str, int]]:
    """Values and bytes a SavedModel's variables checkpoint holds, split into the model's and the optimizer's.

    Keras saves a compiled model's optimizer under the checkpoint's `optimizer/` object path.
    """
    import tensorflow as tf

    reader = tf.train.load_checkpoint(variables_prefix)
    dtypes = reader.get_variable_to_dtype_map()
    totals = {"model": {"values": 0, "bytes": 0}, "optimizer": {"values": 0, "bytes": 0}}
    for name, shape in reader.get_variable_to_shape_map().items():
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH" or dtypes[name] == tf.string:
            continue
        count = 1
        for dim in shape:
            count *= dim
        part = totals["optimizer" if name.startswith("optimizer/") else "model"]
        part["values"] += count
        part["bytes"] += count * dtypes[name].size
    return totals


def served_model_figures(serving_dir: str) -> Dict[str, object]:
    """`served_model_bytes_ratio`: bytes of the newest served version's variables / (parameters x bytes each).

    Parameters and their widths come from the Keras model the SavedModel describes, not from a
    constant: the ratio says what the export holds besides the weights (optimizer slots, for one).
    """
    from bench.stages import load_keras
    from components.serving_dir import latest_version

    version = latest_version(serving_dir)
    if version is None:
        return {"served_model_bytes_ratio": None, "served_model": f"nothing served in {serving_dir}"}
    model_dir = os.path.join(serving_dir, str(version))
    variables = os.path.join(model_dir, "variables")
    model = load_keras(model_dir)
    params, weights = weight_bytes(model)
    del model
    stored = folder_bytes(variables)
    return {
        "served_model_bytes_ratio": round(stored / weights, 3),
        "served_model": {
            "version": version,
            "variables_bytes": stored,
            "parameters": params,
            "weight_bytes": weights,
            "saved_model_bytes": folder_bytes(model_dir),
            "stored_values": stored_values(os.path.join(variables, "variables")),
        },
    }


def model_files(output_dir: str) -> Dict[str, List[Tuple[str, os.stat_result]]]:
    """Files of the segmentation model's SavedModels under a run's output folder, by MODEL_PLACES entry."""
    root = pathlib.Path(output_dir)
    places = {
        names.TRAINER_ID: root / "pipeline_root" / names.TRAINER_ID,
        names.PUSHER_ID: root / "pipeline_root" / names.PUSHER_ID,
        "serving": root / "serving",
        names.LATEST_BLESSED_MODEL_ID: root / "pipeline_root" / names.LATEST_BLESSED_MODEL_ID,
    }
    found: Dict[str, List[Tuple[str, os.stat_result]]] = {}
    for place in MODEL_PLACES:
        files = found[place] = []
        for saved_model in sorted(places[place].rglob(SAVED_MODEL_FILE)):
            folder = saved_model.parent
            if not _is_visible(folder, places[place]):
                continue
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                files.append((str(path), path.stat()))
    return found


def _is_visible(folder: pathlib.Path, top: pathlib.Path) -> bool:
    # Hidden folders are the Pusher's staging areas, gone once a push completes.
    return not any(part.startswith(".") for part in folder.relative_to(top).parts)


def inodes(files: Dict[str, List[Tuple[str, os.stat_result]]]) -> Set[Inode]:
    return {(st.st_dev, st.st_ino) for entries in files.values() for _, st in entries}


def written_by_place(
    files: Dict[str, List[Tuple[str, os.stat_result]]], before: Iterable[Inode] = ()
) -> Dict[str, Dict[str, int]]:
    """Per place: bytes its names hold, and bytes first written there (inodes not in `before`, nor earlier places).

    A hard link shares an earlier name's inode and so writes nothing; a copy is a new inode.
    """
    seen = set(before)
    table = {}
    for place in MODEL_PLACES:
        named = written = links = 0
        for _, st in files.get(place, []):
            named += st.st_size
            key = (st.st_dev, st.st_ino)
            if key in seen:
                links += 1
                continue
            seen.add(key)
            written += st.st_size
        table[place] = {
            "files": len(files.get(place, [])),
            "bytes_named": named,
            "bytes_written": written,
            "files_linked_to_earlier": links,
        }
    return table


def model_copies_figures(
    snapshots: List[Dict[str, List[Tuple[str, os.stat_result]]]], model_bytes: int, labels: Optional[List[str]] = None
) -> Dict[str, object]:
    """`model_copies_per_run`: model bytes the runs wrote / (one model's bytes x models they trained).

    `snapshots` are `model_files` taken after each run into the same output folder, in order; the
    first run trains, exports and pushes, a later one finds the served version for LatestBlessedModel,
    so together they write every copy a run makes. Each run's table says where the bytes went.
    """
    labels = labels or [f"run_{i + 1}" for i in range(len(snapshots))]
    tables, before, total = {}, set(), 0
    for label, files in zip(labels, snapshots):
        table = written_by_place(files, before)
        tables[label] = table
        total += sum(row["bytes_written"] for row in table.values())
        before |= inodes(files)
    trainer_exports = {
        os.path.dirname(p)
        for p, _ in snapshots[-1].get(names.TRAINER_ID, [])
        if os.path.basename(p) == SAVED_MODEL_FILE
    }
    per_model = model_bytes * max(1, len(trainer_exports))
    return {
        "model_copies_per_run": round(total / per_model, 3) if model_bytes else None,
        "model_bytes": model_bytes,
        "model_bytes_written": total,
        "trainer_exports": len(trainer_exports),
        "model_bytes_by_place": tables,
    }
