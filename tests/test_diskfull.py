"""A full disk (ENOSPC injected) in each write path: a backup, a feature-cache entry, a
job's artifacts. Each fails with a message naming the path and the space needed, leaves
no half-written file, and works again once there is space."""

import errno
import json
import shutil

import numpy as np
import pytest

from conftest import TINY
from transferlab.engine import featstore
from transferlab.engine.diskfull import DiskFull

keras = pytest.importorskip("keras")

from transferlab.engine.backup import EpochBackup  # noqa: E402

FULL = OSError(errno.ENOSPC, "No space left on device")


def _fit(folder, epochs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.Dense(1)], name="m")
    model.compile(optimizer="adam", loss="mse")
    backup = EpochBackup(folder)
    start = backup.restore(model)
    x = np.ones((8, 4), "float32")
    h = model.fit(x, x[:, :1], epochs=epochs, initial_epoch=start, verbose=0, callbacks=[backup])
    return start, len(h.history["loss"])


def test_backup_on_a_full_disk(tmp_path, monkeypatch):
    import h5py

    folder = tmp_path / "backup"
    assert _fit(folder, 2) == (0, 2)
    create = h5py.Group.create_dataset

    def half_then_full(self, name, *a, **k):  # the first variable written, then no space
        if name != "0":
            raise FULL
        return create(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", half_then_full)
    with pytest.raises(DiskFull) as e:
        _fit(folder, 4)
    assert str(folder / "epoch3.weights.h5") in str(e.value) and "MB needed" in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == ["constant.h5", "epoch2.weights.h5", "state.json"]
    assert json.loads((folder / "state.json").read_text())["epoch"] == 2  # the last complete state

    monkeypatch.setattr(h5py.Group, "create_dataset", create)  # space again
    assert _fit(folder, 4) == (2, 2)  # resumed after epoch 2


def test_feature_cache_entry_on_a_full_disk(tmp_path, monkeypatch):
    entry = tmp_path / "cache" / "key"
    feats, keys = np.ones((10, 3), "float32"), np.arange(10)
    save = np.save

    def full_at_keys(path, a, **k):
        save(path, a, **k)
        if str(path).endswith("keys.npy"):
            raise FULL

    monkeypatch.setattr(np, "save", full_at_keys)
    with pytest.raises(DiskFull, match=f"writing {entry} .*MB needed"):
        featstore.save(entry, {"m": 1}, feats, keys, 1.0)
    assert list((tmp_path / "cache").iterdir()) == []  # no .tmp- entry, no entry
    monkeypatch.setattr(np, "save", save)
    featstore.save(entry, {"m": 1}, feats, keys, 1.0)
    assert featstore.load(entry, {"m": 1}, keys)[0] is not None


def test_artifacts_on_a_full_disk(tmp_path, monkeypatch):
    from transferlab.runner import artifacts, tracking

    c = tracking.client(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = c.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri())
    run = c.create_run(exp)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.csv", "b.png", "c.txt"):
        (out / name).write_bytes(b"x" * 1000)
    copy = shutil.copy2
    calls = []

    def full_at_second(src, dst, **k):
        calls.append(src)
        if len(calls) == 2:
            with open(dst, "wb") as f:
                f.write(b"x" * 10)  # half a file, then no space
            raise FULL
        return copy(src, dst, **k)

    monkeypatch.setattr(shutil, "copy2", full_at_second)
    dest = tmp_path / "artifacts" / run.info.run_id / "artifacts"
    with pytest.raises(DiskFull, match=f"writing {dest} .*MB needed"):
        artifacts.log_files(c, run.info.run_id, out)
    assert not dest.exists() or list(dest.iterdir()) == []
    monkeypatch.setattr(shutil, "copy2", copy)
    artifacts.log_files(c, run.info.run_id, out)
    assert sorted(a.path for a in c.list_artifacts(run.info.run_id)) == ["a.csv", "b.png", "c.txt"]


def test_a_job_stopped_by_a_full_disk_resumes_once_there_is_space(compose, monkeypatch):
    from transferlab.engine import backup
    from transferlab.runner import job, tracking

    cfg = compose([*TINY, "trainer.epochs=2"])
    write = backup.EpochBackup._write

    def full_at_epoch_1(self, epoch, *a, **k):
        if epoch == 1:
            raise DiskFull(self.folder / "epoch2.weights.h5", 10**6)
        return write(self, epoch, *a, **k)

    monkeypatch.setattr(backup.EpochBackup, "_write", full_at_epoch_1)
    with pytest.raises(DiskFull):
        job.run(cfg)
    c = tracking.client(tracking.tracking_uri(cfg))
    (run,) = c.search_runs([c.get_experiment_by_name("transferlab").experiment_id])
    assert run.info.status == "KILLED" and "No space left" in run.data.tags["error"]  # resumable
    monkeypatch.setattr(backup.EpochBackup, "_write", write)
    assert job.run(cfg)["run_id"] == run.info.run_id
    r = c.get_run(run.info.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["resumed"] == "after epoch 1"
    assert sorted(h.step for h in c.get_metric_history(run.info.run_id, "loss")) == [0, 1]

