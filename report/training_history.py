"""The Trainer's Keras history per epoch, read from the TensorBoard logs in its model_run artifact."""

from __future__ import annotations

import pathlib
from typing import Dict, List, Optional


def training_history(model_run: Optional[str]) -> Dict[str, List[float]]:
    """Keras history per epoch from the Trainer's TensorBoard logs (train/ and validation/ under model_run).

    Keys as Keras names them (`loss`, `val_mean_iou`, `lr`, ...), plus `epoch`: the 0-based epochs this
    Trainer ran (a training resumed from its backup starts after the backup's). TensorBoard's own reader
    loads the events; a Trainer resumed within one execution writes a second events file that repeats
    the epochs since the backup, and the later value of an epoch wins.
    """
    if not model_run:
        return {}
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    history: Dict[str, List[float]] = {}
    epochs: set = set()
    for subdir, prefix in (("train", ""), ("validation", "val_")):
        logdir = pathlib.Path(model_run) / subdir
        if not logdir.is_dir():
            continue
        events = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
        events.Reload()
        for tag in events.Tags()[event_accumulator.TENSORS]:
            if tag.startswith("epoch_"):
                # TF2 event files carry no restart marker, so the accumulator keeps repeated steps.
                by_epoch = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
                history[prefix + tag[len("epoch_") :]] = [by_epoch[step] for step in sorted(by_epoch)]
                epochs.update(by_epoch)
    if history:
        history["epoch"] = sorted(epochs)
    return history
