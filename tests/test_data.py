"""Synthetic data generation, folder scanning and the tf.data pipelines."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab import data
from transferlab.data import imagecheck, synthetic
from transferlab.data import SPLITS, DataError

SRC = Path(__file__).resolve().parents[1] / "src"


def files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every image file below root."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.suffix in (".png", ".jpg")}


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("bin"), 2, images_per_class=10, size=32)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("three"), 3, images_per_class=10, size=32)


@pytest.fixture
def small(tmp_path):
    """A fresh dataset a test may damage: 3 classes, 3/1/1 images per class."""
    return synthetic.generate(tmp_path / "ds", 3, images_per_class=5, size=32)


# --- synthetic ------------------------------------------------------------

def test_layout_counts_and_marker(three):
    names = synthetic.CLASS_SHAPES[:3]
    for split, n in zip(SPLITS, (6, 2, 2)):
        assert sorted(p.name for p in (three / split).iterdir()) == sorted(names)
        for name in names:
            found = sorted((three / split / name).iterdir())
            assert len(found) == n
            assert all(p.name.startswith(f"{name}_") and p.suffix == ".png" for p in found)
            with Image.open(found[0]) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
    # The 10 indices of a class are spread over the splits without overlap.
    idx = [p.stem.split("_")[-1] for p in three.rglob("circle_*.png")]
    assert sorted(map(int, idx)) == list(range(10))
    marker = json.loads((three / ".complete.json").read_text())
    assert marker["num_classes"] == 3 and marker["images_per_class"] == 10


def test_minimum_split_and_bad_args(tmp_path):
    out = synthetic.generate(tmp_path / "min", 2, images_per_class=3, size=16)
    assert {s: len(list((out / s).rglob("*.png"))) for s in SPLITS} == dict.fromkeys(SPLITS, 2)
    for bad in (dict(num_classes=1), dict(num_classes=9), dict(images_per_class=2),
                dict(fmt="gif")):
        with pytest.raises(ValueError):
            synthetic.generate(tmp_path / "bad", **bad)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_deterministic_from_seed(tmp_path, fmt):
    a = files(synthetic.generate(tmp_path / "a", 2, 5, size=32, seed=3, fmt=fmt))
    b = files(synthetic.generate(tmp_path / "b", 2, 5, size=32, seed=3, fmt=fmt))
    c = files(synthetic.generate(tmp_path / "c", 2, 5, size=32, seed=4, fmt=fmt))
    assert len(a) == 10 and all(k.endswith("." + fmt) for k in a)
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_second_call_does_not_rewrite(tmp_path):
    out = synthetic.generate(tmp_path / "d", 2, 5, size=32)
    old = 1_000_000_000  # back-date every file: any rewrite would show up
    for p in out.rglob("*"):
        os.utime(p, ns=(old, old))
    assert synthetic.generate(tmp_path / "d", 2, 5, size=32) == out
    assert all(p.stat().st_mtime_ns == old for p in out.rglob("*") if p.is_file())


def test_regenerates_when_args_change_or_marker_missing(tmp_path):
    out = synthetic.generate(tmp_path / "d", 2, 5, size=32)
    synthetic.generate(out, 2, 3, size=32)
    assert len(files(out)) == 6
    assert not list(out.rglob("circle_4.png"))  # stale files of the old args are gone
    assert json.loads((out / ".complete.json").read_text())["images_per_class"] == 3

    # An interrupted run leaves no marker: the next call starts afresh.
    (out / ".complete.json").unlink()
    stray = out / "train" / "circle" / "stray.png"
    shutil.copy(out / "train" / "circle" / "circle_0.png", stray)
    synthetic.generate(out, 2, 3, size=32)
    assert not stray.exists() and (out / ".complete.json").is_file()
    assert files(out) == files(synthetic.generate(tmp_path / "fresh", 2, 3, size=32))


def test_mean_colour_does_not_give_the_class_away(tmp_path):
    n = 150
    out = synthetic.generate(tmp_path / "m", 8, images_per_class=n, size=12)
    per_class = []
    for name in synthetic.CLASS_SHAPES:
        imgs = np.stack([np.asarray(Image.open(p), dtype=np.float64)
                         for p in out.rglob(f"{name}_*.png")])
        per_class.append(imgs.mean(axis=(1, 2)))  # (n, 3): each image's mean colour
    means = np.stack([m.mean(axis=0) for m in per_class])  # (classes, 3)
    spread = np.concatenate(per_class).std(axis=0)  # (3,) across images
    assert spread.min() > 20  # colours really vary from image to image
    # Each class's average colour is within 4 standard errors of the others'.
    assert np.all(np.abs(means - means.mean(axis=0)) < 4 * spread / np.sqrt(n)), means
    # And the spread of the mean colour does not depend on the class either.
    stds = np.stack([m.std(axis=0) for m in per_class])
    assert stds.max() / stds.min() < 1.5, stds


# --- scan -----------------------------------------------------------------

def test_scan_counts_and_lists_skipped_files(small):
    (small / "train" / ".cache").mkdir()  # a hidden folder is no class
    shutil.copy(small / "train" / "circle" / "circle_0.png", small / "train" / ".cache" / "x.png")
    (small / "train" / "circle" / ".DS_Store").write_bytes(b"\0")
    (small / "train" / "circle" / "notes.txt").write_text("not an image")
    (small / "test" / "README.md").write_text("stray file beside the class folders")
    info = data.scan(str(small))
    assert info.path == small.absolute()
    assert info.class_names == ["circle", "cross", "ring"]  # sorted, like Keras
    assert info.counts == {"train": dict.fromkeys(info.class_names, 3),
                           "validation": dict.fromkeys(info.class_names, 1),
                           "test": dict.fromkeys(info.class_names, 1)}
    assert info.skipped == ["test/README.md: not in a class folder",
                            "train/circle/.DS_Store: hidden file",
                            "train/circle/notes.txt: not an image"]
    assert info.rotated() == []
    assert [e.rel for e in info.files["test"]] == [
        "test/circle/circle_4.png", "test/cross/cross_4.png", "test/ring/ring_4.png"]
    assert [e.label for e in info.files["test"]] == [0, 1, 2]


def test_scan_missing_folder_and_split(tmp_path, small):
    with pytest.raises(DataError, match="does not exist"):
        data.scan(tmp_path / "nope")
    shutil.rmtree(small / "test")  # train/ + validation/ alone is no accepted layout
    with pytest.raises(DataError, match="found folders train, validation and 0 files.*no test/"):
        data.scan(small)


def test_scan_split_without_class_folders(small):
    shutil.rmtree(small / "test")
    (small / "test").mkdir()
    with pytest.raises(DataError, match=r"test has no class sub-folders"):
        data.scan(small)


def test_scan_classes_differ_between_splits(small):
    (small / "test" / "ring").rename(small / "test" / "rings")
    with pytest.raises(DataError) as e:
        data.scan(small)
    msg = str(e.value)
    assert "'test'" in msg and "missing ['ring']" in msg and "extra ['rings']" in msg


def test_scan_empty_class_folder(small):
    for p in (small / "validation" / "cross").iterdir():
        p.unlink()
    (small / "validation" / "cross" / "readme.txt").write_text("no images here")
    (small / "validation" / "cross" / "cut.png").write_bytes(
        (small / "train" / "cross" / "cross_0.png").read_bytes()[:100])
    with pytest.raises(DataError, match="no usable image") as e:
        data.scan(small)
    msg = str(e.value)
    assert str(small / "validation" / "cross") in msg
    assert "2 skipped" in msg and "readme.txt: not an image" in msg and "cut.png: truncated" in msg


def test_scan_needs_two_classes(small):
    for name in ("cross", "ring"):
        for split in SPLITS:
            shutil.rmtree(small / split / name)
    with pytest.raises(DataError, match="at least 2"):
        data.scan(small)


# --- load -----------------------------------------------------------------

def batches(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_load_binary(binary):
    s = data.load(data.scan(binary), image_size=24, batch_size=4, seed=0)
    assert s.class_names == ["circle", "cross"] and s.num_classes == 2
    assert s.counts == {"train": 12, "validation": 4, "test": 4}
    x, y = next(iter(s.train))
    assert x.shape == (4, 24, 24, 3) and x.dtype.name == "float32"
    assert y.shape == (4, 1) and y.dtype.name == "float32"
    for ds, n in ((s.train, 12), (s.validation, 4), (s.test, 4)):
        x, y = batches(ds)
        assert x.shape == (n, 24, 24, 3) and y.shape == (n, 1)
        assert set(np.unique(y)) == {0.0, 1.0}
        assert x.min() >= 0 and x.max() <= 255 and x.max() > 1  # not scaled to 0..1
    assert y.sum() == 2  # test: 2 circles (0), 2 crosses (1)


def test_load_categorical_one_hot(three):
    s = data.load(data.scan(three), image_size=32, batch_size=5, seed=0)
    assert s.num_classes == 3 and s.counts == {"train": 18, "validation": 6, "test": 6}
    x, y = batches(s.train)
    assert y.shape == (18, 3) and y.dtype == np.float32
    assert np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)
    assert np.all(y.sum(axis=0) == 6)


def test_test_paths_follow_the_yield_order(three):
    s = data.load(data.scan(three), image_size=32, batch_size=4, seed=0)
    x, y = batches(s.test)
    assert len(s.test_paths) == len(y) == 6
    expected = [s.class_names.index(p.split("/")[0]) for p in s.test_paths]
    assert list(y.argmax(axis=1)) == expected
    # At the source size resizing is the identity: each yielded image is
    # exactly the file its test path names.
    for img, rel in zip(x, s.test_paths):
        np.testing.assert_array_equal(img, np.asarray(Image.open(three / "test" / rel)))


def test_train_shuffle_is_seeded(binary):
    def order(seed, epochs=1):
        s = data.load(data.scan(binary), image_size=32, batch_size=5, seed=seed,
                      repeat_train=epochs > 1)
        x, _ = batches(s.train.take(12 * epochs // 5 + 1) if epochs > 1 else s.train)
        return x.sum(axis=(1, 2, 3))  # one fingerprint per image

    a, b, c = order(1), order(1), order(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a), np.sort(c))  # same images, new order
    # Repeated: later epochs are reshuffled, each still a permutation of train.
    two = order(1, epochs=2)
    assert len(two) >= 24
    np.testing.assert_array_equal(two[:12], a)
    assert not np.array_equal(two[12:24], a)
    np.testing.assert_array_equal(np.sort(two[12:24]), np.sort(a))


def test_hidden_files_are_skipped_not_loaded(small):
    # macOS AppleDouble files carry an image extension; Keras' loader would
    # try to decode them mid-training.
    shutil.copy(small / "train" / "ring" / "ring_0.png", small / "train" / "ring" / "._ring_0.png")
    info = data.scan(small)
    assert info.counts["train"]["ring"] == 3
    assert info.skipped == ["train/ring/._ring_0.png: hidden file"]
    s = data.load(info, image_size=32, batch_size=4, seed=0)
    assert s.counts["train"] == 9 and s.skipped == info.skipped


def test_same_pixels_as_keras_loader(three):
    """load() decodes and resizes as keras.utils.image_dataset_from_directory, then rounds
    to whole grey levels (the uint8 store): at most 0.5 from Keras' float pixels."""
    import keras

    s = data.load(data.scan(three), image_size=20, batch_size=4, seed=0)
    ref = keras.utils.image_dataset_from_directory(
        str(three / "test"), label_mode="categorical", image_size=(20, 20), shuffle=False,
        batch_size=None, verbose=False)
    assert [Path(p).relative_to(three / "test").as_posix() for p in ref.file_paths] == s.test_paths
    x, y = batches(s.test)
    rx, ry = zip(*[(a.numpy(), b.numpy()) for a, b in ref])
    assert not np.array_equal(np.stack(rx), np.round(np.stack(rx)))  # a resize that rounds
    np.testing.assert_array_equal(x, np.round(np.stack(rx)))
    assert np.abs(x - np.stack(rx)).max() <= 0.5
    np.testing.assert_array_equal(y, np.stack(ry))


def test_load_decodes_every_split_up_front(small):
    """Epochs are served from memory: the files are not read again after load."""
    s = data.load(data.scan(small), image_size=16, batch_size=4, seed=0)
    for p in small.rglob("*.png"):
        p.unlink()
    for ds, n in ((s.train, 9), (s.validation, 3), (s.test, 3)):
        for _ in range(2):
            assert len(batches(ds)[0]) == n


def test_file_gone_after_scan_is_named(small):
    info = data.scan(small)
    (small / "validation" / "ring" / "ring_3.png").unlink()
    with pytest.raises(DataError, match=r"validation/ring/ring_3\.png"):
        data.load(info, image_size=16, batch_size=4, seed=0)


def test_second_scan_uses_the_cache(small, monkeypatch):
    first = data.scan(small)
    assert (small / imagecheck.CACHE_DIRNAME / "scan.json").is_file()
    opened = []
    real = imagecheck.check
    monkeypatch.setattr(imagecheck, "check", lambda p, *a: opened.append(p) or real(p, *a))
    again = data.scan(small)
    assert opened == [] and again == first
    # A changed file (new size and mtime) is checked again, and only that one.
    bad = small / "test" / "ring" / "ring_4.png"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match="test/ring/ring_4.png: truncated"):
        data.scan(small)
    assert opened == [bad]


def test_cache_dir_from_env_or_read_only_dataset(small, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "c"))
    d = imagecheck.default_cache_dir(small)
    assert d.parent == tmp_path / "c" and len(d.name) == 16
    data.scan(small)
    assert (d / "scan.json").is_file() and not (small / imagecheck.CACHE_DIRNAME).exists()
    monkeypatch.delenv("TRANSFERLAB_CACHE")
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    assert imagecheck.default_cache_dir(small).parent == Path.home() / ".cache" / "transferlab"
