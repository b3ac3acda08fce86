"""EarlyStopping's state survives a restart: best value, wait count, best epoch, best weights.

Plain Keras (engine level): a small model on fixed data, the monitored value
scripted per epoch, so the uninterrupted run's stop and its restored weights
are known exactly and an interrupted + resumed run must match them.
"""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from transferlab.engine.backup import EpochBackup, ResumableEarlyStopping  # noqa: E402

VAL_LOSS = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]  # best at epoch 1; patience 3 stops at 4
EPOCHS = len(VAL_LOSS)


class Script(keras.callbacks.Callback):
    """Sets the monitored value of each epoch; optionally 'dies' during an epoch."""

    def __init__(self, die_at=None):
        super().__init__()
        self.die_at, self.seen = die_at, []

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.die_at:  # before the backup of this epoch: as a kill would
            raise KeyboardInterrupt(f"killed in epoch {epoch}")
        logs["score"] = VAL_LOSS[epoch]
        self.seen.append(epoch)


def _model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)], name="m")
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return m


def _fit(folder, die_at=None):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = _model()
    stopper = ResumableEarlyStopping(monitor="score", mode="min", patience=3,
                                     restore_best_weights=True)
    backup = EpochBackup(folder, stopper)
    start = backup.restore(model)
    stopper.resume = backup.early_stopping
    script = Script(die_at)
    try:
        model.fit(x, y, batch_size=8, epochs=EPOCHS, initial_epoch=start, shuffle=False, verbose=0,
                  callbacks=[script, stopper, backup])
    except KeyboardInterrupt:
        backup.wait()
        return None, script.seen, stopper
    return model, script.seen, stopper


def test_resumed_early_stopping_stops_where_the_uninterrupted_run_does(tmp_path):
    whole, seen, stopper = _fit(tmp_path / "whole")
    assert seen == [0, 1, 2, 3, 4] and stopper.best_epoch == 1 and stopper.stopped_epoch == 4
    state = json.loads((tmp_path / "whole" / "state.json").read_text())
    assert state["early_stopping"]["stopped"] is True and state["early_stopping"]["best_epoch"] == 1

    folder = tmp_path / "killed"
    assert _fit(folder, die_at=3)[0] is None  # epochs 0-2 backed up, wait = 1 after epoch 2
    state = json.loads((folder / "state.json").read_text())
    assert state["epoch"] == 3
    assert state["early_stopping"] == {"best": 0.5, "wait": 1, "best_epoch": 1, "stopped": False,
                                       "weights": "best2.h5"}
    resumed, seen, stopper = _fit(folder)
    # Without the carried state it would start counting again at epoch 3, run to the end
    # and restore epoch 3's weights.
    assert seen == [3, 4]
    assert stopper.best_epoch == 1 and stopper.stopped_epoch == 4
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # epoch 1's weights, restored
    # the last epoch's state and the best weights, nothing older
    assert {p.name for p in folder.iterdir()} - {"constant.h5"} == {"best2.h5", "epoch5.weights.h5",
                                                                   "state.json"}
