"""A folder data set full of what real folders hold: every file is kept or skipped.

What counts as "bad" (skipped, listed in ``DatasetInfo.skipped`` with the
reason): truncated and corrupt images (a JPEG whose data stops early, the rest
zero bytes, too: Pillow decodes it, TensorFlow does not), empty files, non-images (``Thumbs.db``,
``notes.txt``) and hidden files (``.DS_Store``, ``._x.jpg``). Everything
Pillow can decode is kept and decoded by Pillow (data/decode.py): upper-case
``.JPG``, grayscale, RGBA, palette, 16-bit, CMYK, TIFF and 1-bit/palette BMP
(TensorFlow's own decoder fails on TIFF and 1-bit BMP and reads a palette
BMP's indices as grey levels: no longer its job).
"""

import io
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from transferlab import data
from transferlab.data import imagecheck
from transferlab.data import SPLITS, DataError

SIZE = 32


def picture(seed: int, cls: int) -> np.ndarray:
    """A smooth RGB picture (compresses well, survives JPEG), brighter red for class 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    a = np.stack([xx * 3 + 60 * cls, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 60, 3)
    return a.clip(0, 255).astype(np.uint8)


def jpeg_bytes(a, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def cut_in_half(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def noisy_jpeg() -> bytes:
    """A JPEG that Pillow still decodes once its second half is zeroed (a small smooth one
    already fails Pillow's own truncation check)."""
    return jpeg_bytes(np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8))


def zero_second_half(p: Path) -> None:
    """The image data stops halfway, the rest zero bytes: what an interrupted copy or a
    pre-allocating sync client leaves (tensorflow/models#5912); the size is unchanged."""
    raw = p.read_bytes()
    sos = raw.index(b"\xff\xda")  # headers and tables before the scan stay whole
    cut = sos + (len(raw) - sos) // 2
    p.write_bytes(raw[:cut] + bytes(len(raw) - cut))


# name -> how the file is written; every kind of messy file, per the issue.
def _messy_files(a: np.ndarray, b: np.ndarray) -> dict:
    rgb = Image.fromarray(a)
    gray16 = (a[..., 0].astype(np.uint16) * 256 + 255 - a[..., 1])  # uses all 16 bits
    return {
        # kept, decoded by TensorFlow as they are
        "IMG_0001.JPG": lambda p: rgb.save(p, format="JPEG", quality=95),
        "gray.png": lambda p: rgb.convert("L").save(p),
        "rgba.png": lambda p: rgb.convert("RGBA").save(p),
        "palette.png": lambda p: rgb.convert("P").save(p),
        "gray16.png": lambda p: Image.fromarray(gray16).save(p),  # mode I;16
        "cmyk.jpg": lambda p: rgb.convert("CMYK").save(p, quality=95),
        "webp_named.jpg": lambda p: rgb.save(p, format="WEBP", lossless=True),
        # kept (TensorFlow's decoder fails on these or decodes them wrongly)
        "scan.tif": lambda p: rgb.save(p, format="TIFF"),
        "palette.bmp": lambda p: rgb.convert("P").save(p, format="BMP"),
        "mono.bmp": lambda p: rgb.convert("1").save(p, format="BMP"),
        # skipped
        "truncated.jpg": lambda p: (p.write_bytes(jpeg_bytes(b)), cut_in_half(p)),
        "truncated.png": lambda p: (rgb.save(p), cut_in_half(p)),
        "zero_padded.jpg": lambda p: (p.write_bytes(noisy_jpeg()), zero_second_half(p)),
        "corrupt.jpg": lambda p: p.write_bytes(np.random.default_rng(1).bytes(3000)),
        "empty.jpg": lambda p: p.write_bytes(b""),
        ".DS_Store": lambda p: p.write_bytes(b"\0\0\0\1Bud1" + bytes(200)),
        "._IMG_0001.JPG": lambda p: p.write_bytes(b"\0\5\26\7" + bytes(100)),  # AppleDouble
        "Thumbs.db": lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500)),
        "notes.txt": lambda p: p.write_text("cats from grandma's phone"),
    }


BAD = {"truncated.jpg": "truncated", "truncated.png": "truncated",
       "zero_padded.jpg": "truncated: no end-of-image marker",
       "corrupt.jpg": "corrupt (not a readable image)",
       "empty.jpg": "corrupt (not a readable image)",
       ".DS_Store": "hidden file", "._IMG_0001.JPG": "hidden file",
       "Thumbs.db": "not an image", "notes.txt": "not an image"}
NOT_TF = {"scan.tif", "palette.bmp", "mono.bmp"}


def make_messy(root: Path) -> Path:
    """2 classes; good PNG/JPEG images in every split, and in test/ and
    train/cats every messy kind (test/ to check pixels in file order)."""
    n = {"train": 6, "validation": 2, "test": 2}
    for split in SPLITS:
        for c, name in enumerate(("cats", "dogs")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n[split]):
                a = picture(100 * c + i + 10 * len(split), c)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(a).save(d / f"{name}_{i}.{ext}", quality=95)
    for split, name in (("test", "dogs"), ("train", "cats")):
        c = int(name == "dogs")
        for fname, write in _messy_files(picture(7, c), picture(8, c)).items():
            write(root / split / name / fname)
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy(tmp_path_factory.mktemp("messy") / "ds")


def expected_pixels(path: Path) -> np.ndarray:
    """What the pipeline must yield, computed independently of imagecheck."""
    with Image.open(path) as im:
        if im.mode == "I;16":  # libpng's 16 -> 8 bits: the high byte (Pillow's convert clips)
            g = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(g[..., None], 3, axis=2).astype(np.float32)
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_scan_sorts_every_messy_file(messy):
    info = data.scan(messy)
    assert info.class_names == ["cats", "dogs"]
    want_skipped = sorted(f"{split}/{name}/{f}: {why}" for split, name in
                          (("test", "dogs"), ("train", "cats")) for f, why in BAD.items())
    assert sorted(info.skipped) == want_skipped
    assert len(info.skipped) == 2 * len(BAD) == 18
    kept = len(_messy_files(picture(0, 0), picture(0, 0))) - len(BAD)  # 10 per messy folder
    assert info.counts == {"train": {"cats": 6 + kept, "dogs": 6},
                           "validation": {"cats": 2, "dogs": 2},
                           "test": {"cats": 2, "dogs": 2 + kept}}
    for e in info.files["test"] + info.files["train"]:
        assert e.source == str(messy / e.rel)  # nothing converted: Pillow reads every kind
    assert {Path(e.rel).name for e in info.files["test"]} >= NOT_TF


def test_load_yields_rgb_0_255_with_the_right_labels(messy):
    info = data.scan(messy)
    s = data.load(info, image_size=SIZE, batch_size=5, seed=0)
    assert s.counts == {k: sum(v.values()) for k, v in info.counts.items()}
    assert s.skipped == info.skipped
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in s.test])
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.dtype == np.float32 and x.shape == (len(s.test_paths), SIZE, SIZE, 3)
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 200  # never divided by 255
    assert list(y[:, 0]) == [float(p.startswith("dogs/")) for p in s.test_paths]
    # At the source size resizing is the identity: each image is its file's
    # pixels, as RGB, TIFF and BMP included (one Pillow decoder).
    for img, rel in zip(x, s.test_paths):
        np.testing.assert_array_equal(img, expected_pixels(messy / "test" / rel), err_msg=rel)
    # Train: every kept image once per epoch, labels as the folders say.
    ty = np.concatenate([y.numpy() for _, y in s.train])
    assert len(ty) == s.counts["train"] and ty.sum() == info.counts["train"]["dogs"]


def test_decoder_pixels_equal_tensorflows(messy):
    """For what TF decodes natively, the one Pillow decoder gives TF's pixels: exactly for
    PNG (16-bit too), GIF, BMP, WebP; for JPEG those of libjpeg's accurate integer IDCT
    (``dct_method="INTEGER_ACCURATE"``), which Pillow uses. Keras' loader uses TF's
    default, the fast IDCT: about 1 grey level apart on photos (README, "Your own data")."""
    import tensorflow as tf

    from transferlab.data.decode import read_rgb

    folder = messy / "test" / "dogs"
    for name in ("IMG_0001.JPG", "gray.png", "rgba.png", "palette.png", "gray16.png",
                 "webp_named.jpg", "dogs_0.jpg", "dogs_1.png"):
        raw = tf.io.read_file(str(folder / name))
        if name.endswith(("JPG", "0.jpg")):
            want = tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE")
            fast = tf.io.decode_image(raw, channels=3, expand_animations=False).numpy()
            assert np.abs(fast.astype(int) - want.numpy()).max() <= 12
        else:
            want = tf.io.decode_image(raw, channels=3, expand_animations=False)
        np.testing.assert_array_equal(read_rgb(folder / name)[0], want.numpy(), err_msg=name)
    gif = messy / "gif.gif"
    Image.fromarray(picture(5, 0)).convert("P").save(gif)
    np.testing.assert_array_equal(read_rgb(gif)[0], tf.io.decode_image(
        tf.io.read_file(str(gif)), channels=3, expand_animations=False).numpy())
    gif.unlink()


def test_class_folder_with_only_bad_files_is_named(tmp_path):
    root = make_messy(tmp_path / "ds")
    d = root / "validation" / "dogs"
    for p in d.iterdir():
        p.unlink()
    for fname, write in _messy_files(picture(1, 1), picture(2, 1)).items():
        if fname in BAD:
            write(d / fname)
    with pytest.raises(DataError) as e:
        data.scan(root)
    msg = str(e.value)
    assert f"Class folder {d} has no usable image (9 skipped:" in msg
    assert "validation/dogs/corrupt.jpg: corrupt" in msg and "..." in msg


_JOB: dict = {}


def messy_job(compose, messy, tmp_path):
    """One real job on the messy folder (run once, shared by the tests below)."""
    if not _JOB:
        import mlflow

        from transferlab.runner import job

        cfg = compose([*TINY, "dataset=folder", f"dataset.path={messy}", f"image_size={SIZE}"])
        _JOB["out"] = job.run(cfg)
        _JOB["client"] = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
        _JOB["tmp"] = tmp_path
    return _JOB["out"], _JOB["client"]


def test_job_runs_end_to_end_on_the_messy_folder(compose, messy, tmp_path):
    out, c = messy_job(compose, messy, tmp_path)
    assert 0 <= out["test_acc"] <= 1
    r = c.get_run(out["run_id"])
    assert r.info.status == "FINISHED" and "test_acc" in r.data.metrics
    assert r.data.metrics["test_images"] == 4 + 10


def test_job_logs_the_skipped_files(compose, messy, tmp_path):
    out, c = messy_job(compose, messy, tmp_path)
    r = c.get_run(out["run_id"])
    assert r.data.tags["skipped_files"] == "18"
    listed = Path(c.download_artifacts(out["run_id"], "skipped_files.txt", str(tmp_path)))
    assert sorted(listed.read_text().splitlines()) == sorted(data.scan(messy).skipped)
    # The report's Data section lists them, the zero-padded JPEG with its reason.
    from transferlab.report import write_report

    paths = write_report(f"sqlite:///{_JOB['tmp']}/mlruns/mlflow.db", tmp_path / "report",
                         run_ids=[out["run_id"]])
    md = Path(paths["md"]).read_text()
    data_section = md[md.index("## Data"):]
    assert "Skipped by the scan (18 file(s)" in data_section
    assert ("2 `truncated: no end-of-image marker` (`train/cats/zero_padded.jpg`, "
            "`test/dogs/zero_padded.jpg`)") in data_section
    assert "dataset.truncated_jpeg=keep" in data_section
    assert ("2 <code>truncated: no end-of-image marker</code> (<code>train/cats/zero_padded.jpg"
            "</code>, <code>test/dogs/zero_padded.jpg</code>)") in Path(paths["html"]).read_text()


def test_a_zero_padded_jpeg_is_what_pillow_decodes_and_tensorflow_refuses(tmp_path, compose):
    """Why it is skipped by default, and that ``dataset.truncated_jpeg=keep`` keeps it."""
    import tensorflow as tf

    from transferlab.data.decode import read_rgb

    p = tmp_path / "zero_padded.jpg"
    whole = noisy_jpeg()
    p.write_bytes(whole)
    zero_second_half(p)
    rgb, _ = read_rgb(p)  # no error from Pillow, but the lower part is not the picture's
    (tmp_path / "ok.jpg").write_bytes(whole)  # the same file, complete: kept
    good, _ = read_rgb(tmp_path / "ok.jpg")
    assert rgb.shape == good.shape == (96, 128, 3)
    np.testing.assert_array_equal(rgb[:8], good[:8])
    assert np.abs(rgb[-8:].astype(int) - good[-8:]).mean() > 20
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(p.read_bytes())
    assert imagecheck.check(p).detail == imagecheck.NO_EOI
    assert imagecheck.check(p, truncated_jpeg="keep").kind == imagecheck.OK
    assert imagecheck.check(tmp_path / "ok.jpg").kind == imagecheck.OK
    # A JPEG with an embedded thumbnail (its own end marker inside APP1), cut the same way.
    thumb = jpeg_bytes(np.zeros((8, 8, 3), np.uint8))
    app1 = b"Exif\0\0" + thumb
    with_thumb = whole[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + whole[2:]
    assert not imagecheck.jpeg_end_missing(with_thumb)
    cut = with_thumb[: len(with_thumb) * 2 // 3]
    assert imagecheck.jpeg_end_missing(cut + bytes(len(with_thumb) - len(cut)))
    # A folder scan: skipped and listed by default, kept with the option.
    root = make_messy(tmp_path / "ds")
    info = data.scan(root)
    assert "train/cats/zero_padded.jpg: truncated: no end-of-image marker" in info.skipped
    kept = data.scan(root, truncated_jpeg="keep")
    assert "train/cats/zero_padded.jpg" in {e.rel for e in kept.files["train"]}
    assert len(kept.skipped) == len(info.skipped) - 2  # train/cats and test/dogs
    from transferlab.config import ConfigError
    from transferlab.runner.validate import validate

    with pytest.raises(ConfigError, match="dataset.truncated_jpeg policy 'maybe'.*Allowed: skip, keep"):
        validate(compose(["dataset.truncated_jpeg=maybe"]))


@pytest.mark.slow
def test_scan_of_2000_photos_takes_seconds(tmp_path):
    """2000 JPEGs of 500x375 (cats-vs-dogs size): the first scan decodes each
    (at 1/8 scale), the second only stats them."""
    rng = np.random.default_rng(0)
    photos = []
    for i in range(20):
        lo = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        a = np.asarray(lo.resize((500, 375), Image.BICUBIC)).astype(int)
        a = (a + rng.integers(-20, 20, a.shape)).clip(0, 255).astype(np.uint8)
        photos.append(jpeg_bytes(a)[:-2] if i == 0 else jpeg_bytes(a))  # one truncated
    for split, n in (("train", 700), ("validation", 150), ("test", 150)):
        for name in ("cats", "dogs"):
            d = tmp_path / "ds" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.jpg").write_bytes(photos[i % 20])
    t0 = time.perf_counter()
    info = data.scan(tmp_path / "ds")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.scan(tmp_path / "ds")
    second = time.perf_counter() - t0
    print(f"scan of 2000 JPEGs: {first:.2f} s first, {second:.2f} s cached")
    assert len(info.skipped) == 2 * (35 + 8 + 8) and "truncated" in info.skipped[0]
    assert first < 10 and second < 1
    shutil.rmtree(tmp_path / "ds")
