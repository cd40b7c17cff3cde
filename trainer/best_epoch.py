"""The weights of the epoch with the best validation mean IoU, kept across a resume from the Trainer's backup."""

from __future__ import annotations

import io
import logging
import math
import posixpath
from typing import Optional

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

# Keras' name for the validation pass's mean IoU (the `mean_iou` metric compile_model adds).
MONITOR = "val_mean_iou"


class BestEpoch(tf.keras.callbacks.Callback):
    """Remembers the weights of the epoch with the highest validation mean IoU; `restore()` puts them back.

    Our own rather than Keras' ModelCheckpoint(save_best_only=True): that one forgets its best value when
    training resumes from BackupAndRestore, so a resumed run could export a worse epoch. This one keeps
    the value and the weights together in one file beside the backup (`writer`: the chief), replaced
    whole at each improvement, read back when training starts and removed when it ends, as Keras
    removes its backup. Put it before BackupAndRestore in the callbacks: an epoch counts as done only
    once its backup is written, so its best weights must be stored by then.
    """

    def __init__(self, path: str, writer: bool):
        super().__init__()
        self.path, self.writer = path, writer
        self.epoch: Optional[int] = None
        self.value = -math.inf
        self._weights: Optional[list] = None

    def on_train_begin(self, logs=None):
        if not tf.io.gfile.exists(self.path):
            return
        with tf.io.gfile.GFile(self.path, "rb") as f, np.load(io.BytesIO(f.read())) as stored:
            self.epoch, self.value = int(stored["epoch"]), float(stored["value"])
            self._weights = [stored[f"w{i}"] for i in range(int(stored["count"]))]
        log.info("Best epoch before the resume: %d (validation mean IoU %.4f)", self.epoch + 1, self.value)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(MONITOR)
        # Ties keep the earlier epoch; a NaN never wins.
        if value is None or not value > self.value:
            return
        self.epoch, self.value, self._weights = epoch, float(value), self.model.get_weights()
        if self.writer:
            self._store()

    def on_train_end(self, logs=None):
        if self.writer and tf.io.gfile.exists(self.path):
            tf.io.gfile.remove(self.path)

    def restore(self) -> Optional[int]:
        """Sets the model to the best epoch's weights and returns that epoch (0-based); None if none validated."""
        if self._weights is None:
            return None
        self.model.set_weights(self._weights)
        return self.epoch

    def _store(self) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            epoch=self.epoch,
            value=self.value,
            count=len(self._weights),
            **{f"w{i}": w for i, w in enumerate(self._weights)},
        )
        # Written aside, then renamed over the last one: a kill mid-write leaves the previous best whole.
        partial = self.path + ".partial"
        tf.io.gfile.makedirs(posixpath.dirname(self.path))  # before Keras' first backup makes it
        with tf.io.gfile.GFile(partial, "wb") as f:
            f.write(buffer.getvalue())
        tf.io.gfile.rename(partial, self.path, overwrite=True)
