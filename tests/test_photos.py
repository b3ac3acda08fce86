"""Real photo folders: EXIF orientation, symlinks, huge images, the scan is the decoder's verdict.

Small generated folders, mostly TensorFlow-free (scan and decode are Pillow);
the pipeline tests load at the source size, where the resize is the identity,
so what reaches the model is compared with exact pixels.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from transferlab import data
from transferlab.data import SPLITS, imagecheck
from transferlab.data.decode import read_rgb

N = 32


def picture(seed: int, cls: int) -> np.ndarray:
    """Not symmetric under any rotation or flip: each orientation gives other pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:N, 0:N]
    a = np.stack([xx * 7 + 40 * cls, yy * 3, (xx * 2 + yy * 5) % 200], -1) + rng.integers(0, 30, 3)
    return a.clip(0, 255).astype(np.uint8)


def save_rotated(a: np.ndarray, path: Path, tag: int = 6) -> None:
    """Stores ``a`` as a phone stores a portrait photo: pixels turned, EXIF Orientation=tag."""
    exif = Image.Exif()
    exif[0x0112] = tag
    stored = Image.fromarray(a).transpose(Image.Transpose.ROTATE_90)  # tag 6: turn 90 CW to show
    stored.save(path, format="PNG", exif=exif)


def upright(path: Path) -> np.ndarray:
    """What a photo viewer shows (independent of transferlab's decoder)."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.fixture
def exif_folder(tmp_path):
    """2 classes x (3, 2, 2) images per split; every image of validation and test and one
    of train is stored rotated with an EXIF tag."""
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("validation", 2), ("test", 2)):
        for c, name in enumerate(("a", "b")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                a = picture(100 * c + 10 * len(split) + i, c)
                if split != "train" or i == 0:
                    save_rotated(a, d / f"{i}.png")
                else:
                    Image.fromarray(a).save(d / f"{i}.png")
    return root


def _by_path(ds, paths):
    x = np.concatenate([b[0].numpy() for b in ds])
    return dict(zip(paths, x))


def test_scan_records_orientation_and_decoder_turns_upright(exif_folder):
    info = data.scan(exif_folder)
    rotated = info.rotated()
    assert len(rotated) == 2 + 4 + 4
    assert all(e.orientation == 6 for s in ("validation", "test") for e in info.files[s])
    f = exif_folder / "test" / "a" / "0.png"
    with Image.open(f) as im:
        stored = np.asarray(im.convert("RGB"))
    assert not np.array_equal(stored, upright(f))  # the tag matters for this picture
    np.testing.assert_array_equal(read_rgb(f)[0], upright(f))


def test_photos_reach_the_model_upright_in_every_split(exif_folder):
    info = data.scan(exif_folder)
    s = data.load(info, image_size=N, batch_size=3, seed=0)
    for split, ds in (("train", s.train.file_order), ("validation", s.validation), ("test", s.test)):
        rels = [e.rel for e in info.files[split]]
        for rel, x in _by_path(ds, rels).items():
            np.testing.assert_array_equal(x, upright(exif_folder / rel), err_msg=rel)


def test_predict_loads_photos_upright(exif_folder):
    from transferlab.predict import load_image

    f = exif_folder / "test" / "b" / "1.png"
    np.testing.assert_array_equal(load_image(f, N), upright(f).astype(np.float32))


def test_job_tags_how_many_images_were_turned(exif_folder):
    from transferlab.runner.job import _log_data_report

    class Client:
        tags, texts = {}, {}

        def set_tag(self, run_id, k, v):
            self.tags[k] = v

        def log_text(self, run_id, text, name):
            self.texts[name] = text

    c = Client()
    info = data.scan(exif_folder)
    _log_data_report(c, "run", info)
    assert c.tags["exif_rotated"] == "10"
    assert c.texts["exif_rotated_files.txt"].splitlines() == info.rotated()


# --- symlinks ---------------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    root = tmp_path / "ds"
    for split in SPLITS:
        for c, name in enumerate(("a", "b")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(picture(1000 * c + 10 * len(split) + i, c)).save(d / f"{i}.png")
    return root


def test_symlinked_sub_folder_is_followed_once(small, tmp_path):
    extra = tmp_path / "elsewhere" / "more_a"
    extra.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(picture(500 + i, 0)).save(extra / f"m{i}.png")
    (small / "train" / "a" / "more").symlink_to(extra, target_is_directory=True)
    (extra / "loop").symlink_to(small / "train" / "a", target_is_directory=True)  # a cycle
    (small / "train" / "a" / "again").symlink_to(extra, target_is_directory=True)  # twice
    info = data.scan(small)
    rels = [e.rel for e in info.files["train"] if e.label == 0]
    assert rels == ["train/a/0.png", "train/a/1.png", "train/a/again/m0.png",
                    "train/a/again/m1.png", "train/a/again/m2.png"]
    assert info.counts["train"]["a"] == 5 and info.skipped == []


@pytest.mark.parametrize("flat", [False, True])
def test_link_to_the_root_or_another_class_never_relabels_its_images(small, tmp_path, flat):
    """A link inside a class folder to the data set's root, a split folder or another
    class folder would read that class's images again under this label: left out, listed."""
    root = small
    if flat:  # one folder of classes, class b itself a symlinked folder elsewhere
        root = tmp_path / "flat"
        (root / "a").mkdir(parents=True)
        for i in range(10):
            Image.fromarray(picture(700 + i, 0)).save(root / "a" / f"{i}.png")
        store_b = tmp_path / "store" / "b"
        store_b.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(picture(800 + i, 1)).save(store_b / f"{i}.png")
        (root / "b").symlink_to(store_b, target_is_directory=True)
        (root / "a" / "loop").symlink_to(root, target_is_directory=True)
        (root / "a" / "other").symlink_to(store_b, target_is_directory=True)
        where = {"a/loop/": "the data set's root", "a/other/": "the class folder b/"}
    else:
        (root / "train" / "a" / "loop").symlink_to(root, target_is_directory=True)
        (root / "train" / "a" / "up").symlink_to(root / "test", target_is_directory=True)
        (root / "train" / "a" / "other").symlink_to(root / "validation" / "b", target_is_directory=True)
        where = {"train/a/loop/": "the data set's root", "train/a/up/": "the split folder test/",
                 "train/a/other/": "the class folder validation/b/"}
    info = data.scan(root)
    every = [e for s in SPLITS for e in info.files[s]]
    assert {e.label for e in every if "/b/" in f"/{e.rel}" or e.rel.startswith("b/")} == {1}
    assert not any(k.rstrip("/") in e.rel for e in every for k in where)
    assert sorted(info.skipped) == sorted(f"{k}: a link to {v}, not read again under this class"
                                          for k, v in where.items())
    assert sum(sum(c.values()) for c in info.counts.values()) == (20 if flat else 12)


def test_dangling_symlink_is_skipped_and_listed(small, tmp_path):
    gone = tmp_path / "gone.jpg"
    (small / "validation" / "b" / "link.jpg").symlink_to(gone)
    (small / "test" / "a" / "self.png").symlink_to(small / "test" / "a" / "self.png")  # ELOOP
    info = data.scan(small)
    assert sorted(info.skipped) == [f"test/a/self.png: dangling symlink -> {small / 'test/a/self.png'}",
                            f"validation/b/link.jpg: dangling symlink -> {gone}"]
    assert info.counts["validation"]["b"] == 2
    # Once the target exists, the link is an image like any other.
    Image.fromarray(picture(9, 1)).save(gone, format="JPEG")
    os.utime(small / "validation" / "b" / "link.jpg", follow_symlinks=False)
    assert data.scan(small).counts["validation"]["b"] == 3


# --- the decoder's verdict, huge images ---------------------------------------

def test_scan_keeps_exactly_what_the_decoder_reads(tmp_path):
    """A header Pillow opens but pixels it cannot decode: skipped by the scan, never
    a failure mid-sweep; every kept file decodes."""
    d = tmp_path / "f"
    d.mkdir()
    good = d / "good.png"
    Image.fromarray(picture(1, 0)).save(good)
    raw = good.read_bytes()
    i = raw.index(b"IDAT") + 8
    (d / "bad_pixels.png").write_bytes(raw[:i] + bytes(len(raw) - i - 20) + raw[-20:])
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "cut.jpg", quality=90)
    (d / "cut.jpg").write_bytes((d / "cut.jpg").read_bytes()[:8000])  # of ~20 kB
    for f in sorted(d.iterdir()):
        v = imagecheck.check(f)
        try:
            read_rgb(f)
            decodes = True
        except Exception:
            decodes = False
        assert decodes or v.kind == imagecheck.SKIP, (f.name, v)  # kept => decodes
    with Image.open(d / "cut.jpg") as im:
        assert im.size == (96, 96)  # the header reads: only decoding fails
    assert imagecheck.check(d / "cut.jpg").detail == "truncated"
    assert imagecheck.check(good).kind == imagecheck.OK
    # Stricter than the decoder where pixels are garbage: Pillow's PNG decoder does not
    # check IDAT CRCs, verify() does.
    assert imagecheck.check(d / "bad_pixels.png").detail.startswith("corrupt (broken PNG")
    info = data.scan(_two_class_folder_with(d, tmp_path / "ds"))
    assert sorted(x.split(": ")[0].rsplit("/", 1)[1] for x in info.skipped) == ["bad_pixels.png",
                                                                               "cut.jpg"]


def _two_class_folder_with(files: Path, root: Path) -> Path:
    """A 2-class folder whose train/a also holds every file of ``files``."""
    for split in SPLITS:
        for c, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(picture(7 * c, c)).save(root / split / name / "ok.png")
    for f in files.iterdir():
        (root / "train" / "a" / f.name).write_bytes(f.read_bytes())
    return root


def test_too_large_image_says_what_it_is_and_how_to_keep_it(small):
    f = small / "train" / "b" / "0.png"
    v = imagecheck.check(f, max_pixels=1000)
    assert v.kind == imagecheck.SKIP
    assert v.detail.startswith(f"too large to decode: {N * N:,} pixels ({N}x{N}) > limit 1,000")
    assert f"dataset.max_image_pixels={N * N}" in v.detail
    info = data.scan(small, max_pixels=N * N)  # at the limit: kept
    assert info.skipped == []
    with pytest.raises(data.DataError, match="too large to decode"):  # every file too large
        data.scan(small, max_pixels=1000)
    # The verdict cache is per limit: back to the default, all kept again.
    assert data.scan(small).skipped == []


def test_pillow_bomb_guard_replaced_by_our_limit():
    """Pillow's own guard would refuse an image the user allowed with dataset.max_image_pixels."""
    import transferlab.data.decode  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is None
