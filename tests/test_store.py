"""The compact image store (data/store.py): RAM or disk, the same batches either way.

``runtime.memory_budget_mb`` only decides where the uint8 images live, so it
must never change a job's numbers: the RAM and disk paths give bit-identical
batches, and the key stays outside the config hash.
"""

import numpy as np
import pytest
from PIL import Image

from transferlab import data
from transferlab.data import store

SRC = 40  # source images 40x30, loaded at 24 px: a real (non-identity) resize


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("validation", 3), ("test", 3)):
        for c, name in enumerate(("a", "b")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 255, (30, SRC, 3), dtype=np.uint8) // (1 + c)
                Image.fromarray(a).save(d / f"{i}.{'png' if i % 2 else 'jpg'}", quality=90)
    # A byte copy across splits: stored once, served to both.
    (root / "test" / "a" / "copy.png").write_bytes((root / "train" / "a" / "1.png").read_bytes())
    return root


def everything(s, epochs=3):
    """Train (repeated: 3 epochs of reshuffles), its file order, validation, test."""
    n = s.counts["train"]
    steps = epochs * -(-n // 4)
    out = [np.concatenate([x.numpy() for x, _ in s.train.take(steps)])]
    out += [np.concatenate([x.numpy() for x, _ in ds])
            for ds in (s.train.file_order, s.validation, s.test)]
    out += [np.concatenate([y.numpy() for _, y in ds]) for ds in (s.train.file_order, s.test)]
    return out


def test_ram_and_disk_give_bit_identical_batches(folder, tmp_path):
    info = data.scan(folder)
    ram = data.load(info, 24, 4, seed=3, repeat_train=True)
    disk = data.load(info, 24, 4, seed=3, repeat_train=True, memory_budget_mb=0,
                     cache_dir=tmp_path / "stores")
    assert ram.storage.startswith("memory (26 images")  # 27 files, one a byte copy
    assert disk.storage.startswith(str(tmp_path / "stores" / "images_24px_"))
    a, b = everything(ram), everything(disk)
    assert a[0].shape == (3 * 16, 24, 24, 3)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert np.array_equal(a[0], np.round(a[0]))  # whole grey levels (uint8 store)
    files = list((tmp_path / "stores").glob("images_*.u8"))
    assert len(files) == 1 and files[0].stat().st_size == store.estimate_bytes(26, 24)


def test_disk_store_is_written_once_and_shared(folder, tmp_path):
    info = data.scan(folder)
    first = data.load(info, 24, 4, seed=0, memory_budget_mb=0, cache_dir=tmp_path)
    path = next(tmp_path.glob("images_*.u8"))
    made = path.stat().st_mtime_ns
    x1 = np.concatenate([x.numpy() for x, _ in first.test])
    for p in folder.rglob("*.*g"):  # served from the store: the files are not read again
        p.unlink()
    again = data.load(info, 24, 4, seed=0, memory_budget_mb=0, cache_dir=tmp_path)
    assert path.stat().st_mtime_ns == made and again.storage == first.storage
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in again.test]), x1)
    assert not list(tmp_path.glob("*.tmp"))


def test_store_follows_the_budget_estimate(folder, tmp_path):
    info = data.scan(folder)
    need_mb = store.estimate_bytes(26, 24) / 2**20
    ram = data.load(info, 24, 4, seed=0, memory_budget_mb=need_mb, cache_dir=tmp_path)
    assert ram.storage.startswith("memory")
    x1 = np.concatenate([x.numpy() for x, _ in ram.test])
    # decoded once into the shared file: the next job copies it into RAM, decoding nothing
    assert len(list(tmp_path.glob("images_*.u8"))) == 1
    for p in folder.rglob("*.*g"):
        p.unlink()
    again = data.load(info, 24, 4, seed=0, memory_budget_mb=need_mb, cache_dir=tmp_path)
    assert again.storage.startswith("memory")
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in again.test]), x1)
    assert data.load(info, 24, 4, seed=0, memory_budget_mb=need_mb * 0.99,
                     cache_dir=tmp_path).storage.startswith(str(tmp_path))
    assert store.default_budget_mb(4) * 4 <= store.default_budget_mb(1) + 4


def test_memory_budget_is_outside_the_config_hash(compose):
    from transferlab.runner import tracking

    a = compose(["dataset=synthetic", "backbone=mobilenetv3small"])
    b = compose(["dataset=synthetic", "backbone=mobilenetv3small", "runtime.memory_budget_mb=0"])
    c = compose(["dataset=synthetic", "backbone=mobilenetv3small", "dataset.max_image_pixels=1000"])
    assert tracking.config_hash(a) == tracking.config_hash(b) != tracking.config_hash(c)


def test_bad_budget_and_pixel_limit_are_config_errors(compose):
    from transferlab.config import ConfigError
    from transferlab.runner.validate import validate

    with pytest.raises(ConfigError, match=r"runtime.memory_budget_mb must be >= 0.*got -1"):
        validate(compose(["dataset=synthetic", "backbone=mobilenetv3small",
                          "runtime.memory_budget_mb=-1"]))
    with pytest.raises(ConfigError, match=r"dataset.max_image_pixels must be >= 1.*got 0"):
        validate(compose(["dataset=synthetic", "backbone=mobilenetv3small",
                          "dataset.max_image_pixels=0"]))


def test_file_changed_after_scan_is_named(folder, tmp_path):
    info = data.scan(folder)
    (folder / "validation" / "b" / "2.jpg").write_bytes(b"not a jpeg any more")
    with pytest.raises(data.DataError, match=r"validation/b/2\.jpg"):
        data.load(info, 24, 4, seed=0, memory_budget_mb=0, cache_dir=tmp_path)
    assert not list(tmp_path.glob("images_*.u8")) and not list(tmp_path.glob("*.tmp"))


def test_unwritable_cache_decodes_straight_into_ram(folder, tmp_path):
    info = data.scan(folder)
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")  # mkdir below it fails (root ignores permission bits)
    ram = data.load(info, 24, 4, seed=0, memory_budget_mb=1, cache_dir=blocked / "cache")
    ref = data.load(info, 24, 4, seed=0, memory_budget_mb=1, cache_dir=tmp_path / "ok")
    assert ram.storage.startswith("memory")
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in ram.test]),
                                  np.concatenate([x.numpy() for x, _ in ref.test]))
