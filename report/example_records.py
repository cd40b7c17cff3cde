"""An Examples artifact's tfrecords as a tf.data dataset of serialized records, compressed or not as TFX wrote them."""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
from tfx_bsl.tfxio import dataset_util


def tfrecords(files: Sequence[str], parallel_reads: Optional[int] = None) -> tf.data.Dataset:
    """Serialized records of Examples files as TFX wrote them, plain or gzip (by file name)."""
    # TFXIO's own rule (GZIP for *.gz names), so we read exactly what the Trainer reads.
    compression = dataset_util.detect_compression_type(tf.constant(list(files))).numpy().decode()
    if compression not in ("", "GZIP"):  # TFRecordDataset would read the odd ones out as corrupt records
        raise ValueError(f"cannot read .gz and plain tfrecords as one dataset: {list(files)}")
    return tf.data.TFRecordDataset(list(files), compression_type=compression, num_parallel_reads=parallel_reads)
