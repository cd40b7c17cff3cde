"""BestEpoch: the best validated epoch's weights are the ones restored, across a resume, and nothing is left behind."""

import math

import numpy as np
import pytest
import tensorflow as tf

from config.settings import ModelConfig
from trainer import best_epoch, model as model_lib

TINY = ModelConfig(image_size=32, width_multiplier=0.125, head_width=8)


@pytest.fixture
def model():
    yield model_lib.build_model(TINY, "float32")
    tf.keras.backend.clear_session()


def _epoch(callback, model, epoch, value, fill):
    """Ends `epoch` with every weight set to `fill` and `value` as the validation mean IoU."""
    model.set_weights([np.full(w.shape, fill, np.float32) for w in model.get_weights()])
    callback.on_epoch_end(epoch, {"loss": 1.0, best_epoch.MONITOR: value})


def _fills(model):
    return sorted({float(v) for w in model.get_weights() for v in np.unique(w)})


def _callback(model, path, writer=True):
    callback = best_epoch.BestEpoch(str(path), writer=writer)
    callback.set_model(model)
    callback.on_train_begin()
    return callback


def test_the_best_epoch_is_restored_not_the_last(model, tmp_path):
    callback = _callback(model, tmp_path / "backup" / "best.npz")
    for epoch, (value, fill) in enumerate([(0.5, 1.0), (0.7, 2.0), (0.7, 3.0), (float("nan"), 4.0), (0.6, 5.0)]):
        _epoch(callback, model, epoch, value, fill)
    assert callback.restore() == 1  # ties keep the earlier epoch; NaN never wins
    assert _fills(model) == [2.0] and callback.value == pytest.approx(0.7)


def test_the_best_so_far_survives_a_resume(model, tmp_path):
    path = tmp_path / "backup" / "best.npz"
    first = _callback(model, path)
    _epoch(first, model, 0, 0.4, 1.0)
    _epoch(first, model, 1, 0.8, 2.0)
    _epoch(first, model, 2, 0.5, 3.0)
    assert path.exists() and not path.with_name("best.npz.partial").exists()
    # Killed here: no on_train_end. The retry is a new process: a new callback over the same file.
    resumed = _callback(model, path)
    assert (resumed.epoch, resumed.value) == (1, pytest.approx(0.8))
    _epoch(resumed, model, 3, 0.75, 4.0)
    assert resumed.restore() == 1 and _fills(model) == [2.0]
    resumed.on_train_end()
    assert not path.exists()  # gone with the backup: a later, fresh training starts with no best


def test_only_the_writer_stores_but_every_replica_restores(model, tmp_path):
    path = tmp_path / "best.npz"
    replica = _callback(model, path, writer=False)
    _epoch(replica, model, 0, 0.3, 7.0)
    _epoch(replica, model, 1, 0.1, 8.0)
    assert not path.exists()
    assert replica.restore() == 0 and _fills(model) == [7.0]


def test_no_validated_epoch_leaves_the_weights_alone(model, tmp_path):
    callback = _callback(model, tmp_path / "best.npz")
    callback.on_epoch_end(0, {"loss": 1.0})
    before = model.get_weights()
    assert callback.restore() is None and callback.value == -math.inf
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
