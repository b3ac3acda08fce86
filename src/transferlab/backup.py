"""Per-epoch backups of a job's model and optimizer state, so a killed job resumes.

``EpochBackup`` is the fit loop's callback (train.py); ``clear_backup``
removes a finished job's folder (job.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras

_BACKUP_FORMAT = "transferlab-h5-1"


def _state_variables(model) -> list:
    """Everything a resumed phase needs: the model's variables, then its optimizer's."""
    return list(model.weights) + list(model.optimizer.variables)


class EpochBackup(keras.callbacks.Callback):
    """Model + optimizer state after every epoch, written atomically.

    Like ``keras.callbacks.BackupAndRestore``, but a kill -9 in the middle of
    a save cannot leave an unreadable backup: Keras' callback overwrites its
    ``.weights.h5`` in place, and the resume test here caught a truncated
    file ("truncated file: eof = 96") after such a kill. Weights go to a new
    file per epoch, then ``state.json`` is replaced atomically to point at it.

    Every variable of the model and of its optimizer is written straight
    with h5py, one dataset per variable in a fixed order (checked by count
    and shape on restore): the same state as ``model.save_weights``, about
    4x faster (MobileNetV2: 0.05 s instead of 0.2 s per epoch, which was
    most of the framework's per-epoch overhead over a plain ``model.fit``),
    and written by a background thread from a snapshot taken at the epoch's
    end, while the next epoch trains. ``state.json`` only ever names a
    complete file, so a kill during a write resumes from the epoch before.
    Backups written by ``save_weights`` are still restored.
    """

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder
        self._pool = None
        self._pending = None
        self._constant: dict = {}

    def restore(self, model) -> int:
        """Loads the last saved state into ``model``; returns the epoch to resume at (0: none).

        A backup of another model (the full model vs the head model trained on
        cached features, after ``trainer.feature_cache`` changed) is not
        loaded: the phase then starts again.
        """
        state_file = self.folder / "state.json"
        if not state_file.exists():
            return 0
        state = json.loads(state_file.read_text())
        if state.get("model", model.name) != model.name:
            print(f"[transferlab] backup of {state['model']} does not fit {model.name}: "
                  "the phase starts again")
            return 0
        model.optimizer.build(model.trainable_variables)  # optimizer variables must exist
        path = self.folder / state["weights"]
        if state.get("format") != _BACKUP_FORMAT:
            model.load_weights(path)  # written by model.save_weights
            return int(state["epoch"])
        import h5py

        variables = _state_variables(model)
        with h5py.File(path, "r") as f:
            # By position and shape, as save_weights does (auto-numbered layer names
            # such as re_lu_13 differ between two builds in one process).
            arrays = [f[str(i)][()] for i in range(len(f.keys()))]
        if len(arrays) != len(variables) or any(a.shape != tuple(v.shape) for a, v in zip(arrays, variables)):
            raise ValueError(f"backup {path} holds other variables than {model.name} "
                             f"({len(arrays)} arrays for {len(variables)} variables)")
        for a, v in zip(arrays, variables):
            v.assign(a)
        return int(state["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        """Snapshots the state now; the file is written while the next epoch trains."""
        import numpy as np

        self.wait()  # one write at a time, in epoch order
        variables = _state_variables(self.model)
        arrays = []
        for v in variables:
            if id(v) in self._constant:  # a frozen base weight: read once per phase
                a = self._constant[id(v)]
                if a is None:
                    a = self._constant[id(v)] = np.asarray(keras.ops.convert_to_numpy(v))
            else:
                a = np.asarray(keras.ops.convert_to_numpy(v))
            arrays.append(a)
        paths = [v.path for v in variables]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="epoch-backup")
        self._pending = self._pool.submit(self._write, epoch, arrays, paths, self.model.name)

    def on_train_begin(self, logs=None):
        # Non-trainable weights of an inference-mode base (frozen kernels, BatchNorm
        # statistics) cannot change while fit runs: snapshot them once, not every epoch.
        from transferlab.model import InferenceMode

        self._constant = {id(v): None for layer in self.model.layers if isinstance(layer, InferenceMode)
                          for v in layer.base.non_trainable_weights}

    def on_train_end(self, logs=None):
        self.wait()  # the phase's last state is on disk before fit returns

    def wait(self) -> None:
        """Blocks until the last snapshot is on disk (re-raises its error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, epoch: int, arrays, paths, model_name: str) -> None:
        import h5py

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch{epoch + 1}.weights.h5"
        tmp = self.folder / f"tmp-{name}"
        with h5py.File(tmp, "w") as f:
            f.attrs["paths"] = paths  # for people reading the file
            for i, a in enumerate(arrays):
                f.create_dataset(str(i), data=a)
        os.replace(tmp, self.folder / name)
        state_tmp = self.folder / "state.json.tmp"
        state_tmp.write_text(json.dumps({"epoch": epoch + 1, "weights": name, "model": model_name,
                                         "format": _BACKUP_FORMAT}))
        os.replace(state_tmp, self.folder / "state.json")
        for old in self.folder.glob("*.weights.h5"):
            if old.name != name:
                old.unlink()


def clear_backup(backup_dir: Path) -> None:
    """Removes a finished job's backups."""
    shutil.rmtree(backup_dir, ignore_errors=True)
