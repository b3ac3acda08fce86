"""Per-epoch backups of a job's model and optimizer state, so a killed job resumes.

``EpochBackup`` is the fit loop's callback (train.py); ``clear_backup``
removes a finished job's folder (job.py). ``ResumableEarlyStopping`` is
Keras' EarlyStopping whose state (best value, wait count, best epoch, best
weights, whether it stopped) is part of each epoch's backup, so a resumed job
stops where the uninterrupted one would and restores the same best weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras

from transferlab.engine.diskfull import writing

# h5-1: every variable in the epoch's file; h5-2: the frozen ones in constant.h5, once.
_FORMATS = ("transferlab-h5-1", "transferlab-h5-2")
_CONSTANT = "constant.h5"


def constant_variables(model) -> set[int]:
    """Ids of the variables ``fit`` cannot change: the non-trainable weights of a base in
    inference mode; of a random base run as plain Keras (``FollowsTraining``), those less
    the moving statistics of its trainable BatchNorm layers (training mode moves them)."""
    from transferlab.models.layers import FollowsTraining, InferenceMode

    out = set()
    for layer in model.layers:
        if isinstance(layer, InferenceMode):
            out |= {id(v) for v in layer.base.non_trainable_weights}
        elif isinstance(layer, FollowsTraining):
            moving = {id(v) for l in layer.base._flatten_layers()  # noqa: SLF001
                      if isinstance(l, keras.layers.BatchNormalization) and l.trainable
                      for v in l.non_trainable_weights}
            out |= {id(v) for v in layer.base.non_trainable_weights if id(v) not in moving}
    return out


def _state_variables(model) -> list:
    """Everything a resumed phase needs: the model's variables, then its optimizer's."""
    return list(model.weights) + list(model.optimizer.variables)


def _write_h5(path: Path, arrays: dict, paths: list) -> None:
    """Datasets named by variable index, written to a new file, then renamed into place.

    Raises:
        DiskFull: no space left (the new file removed; the previous state stays).
    """
    import h5py

    tmp = path.with_name(f"tmp-{path.name}")
    needed = sum(a.nbytes for a in arrays.values()) + 64 * 1024
    with writing(path, needed, partial=(tmp,)):
        with h5py.File(tmp, "w") as f:
            f.attrs["paths"] = paths  # for people reading the file
            for i, a in arrays.items():
                f.create_dataset(str(i), data=a)
        os.replace(tmp, path)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``keras.callbacks.EarlyStopping`` that can start from a backed-up state.

    ``resume`` (set before ``fit``; from ``EpochBackup.restore``) holds
    ``best``, ``wait``, ``best_epoch`` and ``best_weights``; Keras resets them
    in ``on_train_begin``, so they are put back right after.
    """

    resume: dict | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume:
            self.best = self.resume.get("best")
            self.wait = int(self.resume.get("wait", 0))
            self.best_epoch = int(self.resume.get("best_epoch", 0))
            self.best_weights = self.resume.get("best_weights")

    def state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"best": best, "wait": int(self.wait), "best_epoch": int(self.best_epoch)}


class EpochBackup(keras.callbacks.Callback):
    """Model + optimizer state after every epoch, written atomically.

    Like ``keras.callbacks.BackupAndRestore``, but a kill -9 in the middle of
    a save cannot leave an unreadable backup: Keras' callback overwrites its
    ``.weights.h5`` in place, and the resume test here caught a truncated
    file ("truncated file: eof = 96") after such a kill. Weights go to a new
    file per epoch, then ``state.json`` is replaced atomically to point at it.

    Every variable of the model and of its optimizer is written straight
    with h5py, one dataset per variable index (checked by count and shape on
    restore): the same state as ``model.save_weights``, about 4x faster, and
    written by a background thread from a snapshot taken at the epoch's end,
    while the next epoch trains. The weights of an inference-mode base that
    are not trainable cannot change during ``fit``, so they go to
    ``constant.h5`` once per ``fit`` and each epoch's file holds only the
    rest (VGG19 with its base frozen: 80 MB written once instead of every
    epoch). ``state.json`` only ever names complete files, so a kill during
    a write resumes from the epoch before. Backups written by
    ``save_weights`` are still restored.
    """

    def __init__(self, folder: Path, stopper: ResumableEarlyStopping | None = None):
        super().__init__()
        self.folder = folder
        self.stopper = stopper  # runs before this callback: its state of the epoch is saved
        self.early_stopping: dict | None = None  # restore(): the stopper's state, best weights loaded
        self._best_saved: int | None = None  # epoch whose best weights are on disk
        self._pool = None
        self._pending = None
        self._constant: set = set()  # ids of the variables that cannot change during fit
        self._constant_written = False

    def restore(self, model) -> int:
        """Loads the last saved state into ``model``; returns the epoch to resume at (0: none).

        A backup of another model (the full model vs the head model trained on
        cached features, after ``runtime.feature_cache`` changed) is not
        loaded: the phase then starts again.
        """
        state_file = self.folder / "state.json"
        if not state_file.exists():
            return 0
        state = json.loads(state_file.read_text())
        self.early_stopping = None
        if state.get("model", model.name) != model.name:
            print(f"[transferlab] backup of {state['model']} does not fit {model.name}: "
                  "the phase starts again")
            return 0
        model.optimizer.build(model.trainable_variables)  # optimizer variables must exist
        path = self.folder / state["weights"]
        if state.get("format") not in _FORMATS:
            model.load_weights(path)  # written by model.save_weights
            return int(state["epoch"])
        import h5py

        variables = _state_variables(model)
        arrays = {}
        # By index and shape, as save_weights does (auto-numbered layer names such as
        # re_lu_13 differ between two builds in one process).
        for file in [path] + ([self.folder / state["constant"]] if state.get("constant") else []):
            with h5py.File(file, "r") as f:
                arrays.update({int(k): f[k][()] for k in f.keys()})
        if sorted(arrays) != list(range(len(variables))) or any(
                arrays[i].shape != tuple(v.shape) for i, v in enumerate(variables)):
            raise ValueError(f"backup {path} holds other variables than {model.name} "
                             f"({len(arrays)} arrays for {len(variables)} variables)")
        for i, v in enumerate(variables):
            v.assign(arrays[i])
        from transferlab.models.weights import finalize_states

        finalize_states(model)  # assign() leaves Normalization on the statistics of its build
        es = state.get("early_stopping")
        if es is not None:
            es = dict(es)
            if es.get("weights"):
                with h5py.File(self.folder / es["weights"], "r") as f:
                    es["best_weights"] = [f[str(i)][()] for i in range(len(f.keys()))]
                self._best_saved = es["best_epoch"]
            self.early_stopping = es
        return int(state["epoch"])

    def on_train_begin(self, logs=None):
        self._constant = constant_variables(self.model)
        self._constant_written = False

    def on_epoch_end(self, epoch, logs=None):
        """Snapshots the state now; the files are written while the next epoch trains."""
        import numpy as np

        self.wait()  # one write at a time, in epoch order
        variables = _state_variables(self.model)
        write_constant = not self._constant_written
        arrays, constant = {}, {}
        for i, v in enumerate(variables):
            if id(v) not in self._constant:
                arrays[i] = np.asarray(keras.ops.convert_to_numpy(v))
            elif write_constant:
                constant[i] = np.asarray(keras.ops.convert_to_numpy(v))
        self._constant_written = True
        paths = [v.path for v in variables]
        es = None
        if self.stopper is not None:
            es = dict(self.stopper.state(), stopped=bool(self.model.stop_training))
            weights = self.stopper.best_weights
            if weights is not None and self._best_saved != es["best_epoch"]:
                es["best_weights"] = {i: np.asarray(w) for i, w in enumerate(weights)}
                self._best_saved = es["best_epoch"]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="epoch-backup")
        self._pending = self._pool.submit(self._write, epoch, arrays, constant if write_constant else None,
                                          paths, self.model.name, bool(self._constant), es)

    def on_train_end(self, logs=None):
        self.wait()  # the phase's last state is on disk before fit returns

    def wait(self) -> None:
        """Blocks until the last snapshot is on disk (re-raises its error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, epoch: int, arrays: dict, constant: dict | None, paths, model_name: str,
               has_constant: bool, es: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if constant is not None:
            _write_h5(self.folder / _CONSTANT, constant, paths)
        name = f"epoch{epoch + 1}.weights.h5"
        _write_h5(self.folder / name, arrays, paths)
        state = {"epoch": epoch + 1, "weights": name, "model": model_name,
                 "constant": _CONSTANT if has_constant else None, "format": _FORMATS[-1]}
        keep = {name}
        if es is not None:
            best = es.pop("best_weights", None)
            es["weights"] = f"best{es['best_epoch'] + 1}.h5"
            if best is not None:
                _write_h5(self.folder / es["weights"], best, [])
            if not (self.folder / es["weights"]).exists():
                es["weights"] = None  # restore_best_weights=False: nothing to keep
            keep.add(es["weights"])
            state["early_stopping"] = es
        state_tmp = self.folder / "state.json.tmp"
        with writing(self.folder / "state.json", 4096, partial=(state_tmp, self.folder / name)):
            state_tmp.write_text(json.dumps(state))
            os.replace(state_tmp, self.folder / "state.json")
        for old in [*self.folder.glob("*.weights.h5"), *self.folder.glob("best*.h5")]:
            if old.name not in keep:
                old.unlink()


def clear_backup(backup_dir: Path) -> None:
    """Removes a finished job's backups."""
    shutil.rmtree(backup_dir, ignore_errors=True)
