"""Duplicates and leakage across splits, dataset statistics: TF-free (Pillow, numpy, the real scan)."""

import io
import json
import logging
import shutil
import time

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image, ImageEnhance

from transferlab import data
from transferlab.data import duplicates, prepared, stats
from transferlab.data.duplicates import equal_key_pairs, near_pairs


def scene(seed: int, size=(64, 48)) -> Image.Image:
    """A smooth random picture (low-frequency colours + grain): distinct per seed."""
    rng = np.random.default_rng(seed)
    lo = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    a = np.asarray(lo.resize(size, Image.BICUBIC)).astype(int) + rng.integers(-6, 6, (size[1], size[0], 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def save(im: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)


def leaky_folder(root):
    """train 4+4 distinct; validation: 1 byte copy of train/a + 1 distinct per class;
    test: a re-encoded, resized JPEG of train/a/1 filed under b (near, other label),
    a brighter copy of train/b/2 under b (near), 1 distinct per class; train/a/3 repeated in train."""
    for k, cls in enumerate("ab"):
        for i in range(4):
            save(scene(10 * k + i), root / "train" / cls / f"{i}.png")
        save(scene(100 + k), root / "validation" / cls / "own.png")
        save(scene(200 + k), root / "test" / cls / "own.png")
    shutil.copyfile(root / "train/a/0.png", root / "validation/a/copy.png")
    small = scene(1).resize((48, 36), Image.LANCZOS)
    save(small, root / "test/b/resized.jpg", quality=80)
    save(ImageEnhance.Brightness(scene(12)).enhance(1.08), root / "test/b/brighter.png")
    shutil.copyfile(root / "train/a/3.png", root / "train/a/3 again.png")
    return root


@pytest.fixture
def leaky(tmp_path):
    return leaky_folder(tmp_path / "leaky")


def cfg_for(path, mode):
    return OmegaConf.create({"dataset": {"name": "folder", "path": str(path), "duplicates": mode}})


# -- the search -------------------------------------------------------------------------


def brute_force(h, t):
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= t, 1))
    return {(int(a), int(b)): int(d[a, b]) for a, b in zip(i, j)}


def test_equal_key_pairs_is_every_pair_of_equal_keys():
    keys = np.array([3, 1, 3, 2, 3, 1, 7])
    got = {tuple(sorted(p)) for p in zip(*equal_key_pairs(keys))}
    assert got == {(0, 2), (0, 4), (2, 4), (1, 5)}
    assert len(equal_key_pairs(np.array([1, 2, 3]))[0]) == 0


@pytest.mark.parametrize("t", [0, 3, 6, 10])
def test_near_pairs_equals_brute_force_with_planted_pairs(t):
    """3,000 random hashes plus 300 copies with 0..t+2 bits flipped: the pigeonhole search
    finds exactly the brute-force pairs within t bits, each once, with its distance."""
    rng = np.random.default_rng(t)
    h = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    planted = h[:300].copy()
    for k in range(300):
        for b in rng.choice(64, k % (t + 3), replace=False):
            planted[k] ^= np.uint64(1) << np.uint64(b)
    h = np.concatenate([h, planted])
    i, j, d = near_pairs(h, t)
    got = {tuple(sorted((int(a), int(b)))): int(x) for a, b, x in zip(i, j, d)}
    assert len(got) == len(i)  # no pair twice
    want = brute_force(h, t)
    assert got == want and len(want) >= 300 * (t + 1) // (t + 3)


def test_near_search_scales_to_25k_hashes():
    """25,000 random hashes + 50 planted copies within 6 bits: found, in well under the
    ~2 s a chunked n^2 comparison takes (0.13 s measured on the build machine)."""
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**64, 25_000, dtype=np.uint64)
    h[-50:] = h[:50] ^ np.uint64(0b1011)  # 3 bits away
    t0 = time.perf_counter()
    i, j, d = near_pairs(h, duplicates.NEAR_THRESHOLD)
    took = time.perf_counter() - t0
    print(f"near_pairs on 25,000 hashes: {took:.2f} s")
    assert {(int(a), int(b)) for a, b in zip(np.minimum(i, j), np.maximum(i, j))} >= {
        (k, 24_950 + k) for k in range(50)}
    assert took < 5


def test_thumbnail_check_tells_edits_from_other_pictures():
    a = np.asarray(scene(1).resize((16, 16), Image.BOX), float)
    brighter = np.asarray(ImageEnhance.Brightness(scene(1)).enhance(1.2).resize((16, 16), Image.BOX), float)
    other = np.asarray(scene(2).resize((16, 16), Image.BOX), float)
    assert duplicates.similar(a, brighter) and not duplicates.similar(a, other)
    flat, flat2 = np.full((16, 16, 3), 200.0), np.full((16, 16, 3), 120.0)
    assert duplicates.similar(flat, flat + 0.5) and not duplicates.similar(flat, flat2)
    assert not duplicates.similar(a, None)


def test_one_shape_on_other_backgrounds_is_not_a_copy():
    """The same green square, centred, on two dark backgrounds of other hues (a new user's
    product-photo-like classes): 0.98 correlated over the channels, yet not one picture
    edited, so not a duplicate; the same picture brightened or darkened still is."""
    def square(bg, side, lo, hi):  # the trial's two files: 41 and 55 px, square 6..39 and 8..53
        a = np.full((side, side, 3), bg, np.uint8)
        a[lo:hi + 1, lo:hi + 1] = (40, 200, 40)
        return Image.fromarray(a)

    thumb = lambda im: np.asarray(im.resize((16, 16), Image.BOX), float)  # noqa: E731
    a, b = thumb(square((3, 29, 50), 41, 6, 39)), thumb(square((55, 40, 58), 55, 8, 53))
    x, y = a.ravel() - a.mean(), b.ravel() - b.mean()
    assert x @ y / np.sqrt((x @ x) * (y @ y)) > duplicates.MIN_CORRELATION  # what passed before
    assert not duplicates.similar(a, b)
    for factor in (0.85, 1.1):
        edited = thumb(ImageEnhance.Brightness(square((3, 29, 50), 41, 6, 39)).enhance(factor))
        assert duplicates.similar(a, edited), factor


def test_reencoded_noise_texture_is_confirmed_by_its_coarse_means(tmp_path):
    """Re-encoding replaces pixel noise: the thumbnails of a noise image and its JPEG copy
    hardly correlate, yet their 4x4 block means agree; another noise image's do not."""
    rng = np.random.default_rng(3)
    noise = [Image.fromarray(np.clip(rng.normal(110, 50, (40, 40, 3)), 0, 255).astype(np.uint8))
             for _ in range(2)]
    noise[0].save(tmp_path / "a.png")
    noise[0].save(tmp_path / "a.jpg", quality=75)
    noise[1].save(tmp_path / "b.png")
    a, copy, other = (duplicates.thumbnail(str(tmp_path / f)) for f in ("a.png", "a.jpg", "b.png"))
    x, y = a.ravel() - a.mean(), copy.ravel() - copy.mean()
    assert x @ y / np.sqrt((x @ x) * (y @ y)) < duplicates.MIN_CORRELATION
    assert duplicates.similar(a, copy) and not duplicates.similar(a, other)


# -- on a real scanned folder --------------------------------------------------------------


def test_finder_reports_exact_near_label_conflicts_and_within_split(leaky):
    info = data.scan(leaky)
    assert all(len(e.phash) == 16 for s in data.SPLITS for e in info.files[s])
    found = duplicates.find(info)
    pairs = {(p.path_a, p.path_b): p for p in found.pairs}
    assert set(pairs) == {
        ("train/a/0.png", "validation/a/copy.png"), ("train/a/1.png", "test/b/resized.jpg"),
        ("train/b/2.png", "test/b/brighter.png"), ("train/a/3 again.png", "train/a/3.png")}
    exact = pairs[("train/a/0.png", "validation/a/copy.png")]
    assert (exact.kind, exact.distance, exact.same_label, exact.cross) == ("exact", 0, True, True)
    resized = pairs[("train/a/1.png", "test/b/resized.jpg")]
    assert resized.kind == "near" and resized.distance <= duplicates.NEAR_THRESHOLD and not resized.same_label
    assert pairs[("train/b/2.png", "test/b/brighter.png")].same_label
    assert not pairs[("train/a/3 again.png", "train/a/3.png")].cross
    assert found.counts() == {"train/validation": {"exact": 1, "near": 0, "different_label": 0},
                              "train/test": {"exact": 0, "near": 2, "different_label": 1},
                              "train/train": {"exact": 1, "near": 0, "different_label": 0}}
    assert found.summary() == ("train/validation: 1 exact + 0 near; train/test: 0 exact + 2 near "
                               "(1 with a different label); within train: 1 exact + 0 near")
    rows = found.csv().splitlines()
    assert rows[0] == "split_a,path_a,split_b,path_b,kind,distance,same_label"
    assert "train,train/a/1.png,test,test/b/resized.jpg,near," in found.csv() and len(rows) == 5


def test_distinct_images_and_generated_sets_have_no_duplicates(tmp_path):
    """Distinct pictures: none. The synthetic shapes (flat background, one shape) collide
    in the 64-bit phash; the thumbnail check must keep them apart."""
    from transferlab.data import synthetic

    root = synthetic.generate(tmp_path / "syn", 4, 40, 48, 0)
    assert duplicates.find(data.scan(root)).pairs == []


def test_confirmed_and_rejected_candidates_are_read_once_per_data_set(tmp_path, monkeypatch):
    """Every job of a sweep looks for duplicates: the second search (another process, the
    same cache folder) reads no file and finds the same pairs; an edited file is read again."""
    from transferlab.data import synthetic, thumbs

    root = synthetic.generate(tmp_path / "syn", 4, 40, 48, 0)  # shapes: many rejected candidates
    shutil.copyfile(next((root / "train").rglob("*.png")), root / "test" / "circle" / "copy.png")
    scene(1).resize((48, 36)).save(root / "test" / "square" / "near.jpg", quality=70)
    scene(1).save(root / "train" / "square" / "orig.png")
    reads = []
    real = thumbs.thumbnail
    monkeypatch.setattr(thumbs, "thumbnail", lambda p: reads.append(p) or real(p))
    info = data.scan(root)
    first = duplicates.find(info)
    n_first = len(reads)
    assert {p.kind for p in first.cross} == {"exact", "near"}
    verdicts = json.loads((root / ".transferlab_cache" / thumbs.VERDICTS).read_text())["verdicts"]
    assert sorted(set(verdicts.values())) == [False, True]  # rejected shapes are kept too
    reads.clear()
    assert duplicates.find(data.scan(root)).pairs == first.pairs and reads == []
    scene(1).resize((40, 30)).save(root / "test" / "square" / "near.jpg", quality=50)  # new bytes
    again = duplicates.find(data.scan(root))
    assert any(r.endswith("near.jpg") for r in reads) and len(reads) < n_first  # its pairs only
    assert again.pairs == first.pairs  # still a copy, now confirmed on its new bytes
    reads.clear()
    assert duplicates.find(data.scan(root), cache_dir="").pairs == again.pairs and len(reads) >= n_first - 1  # no cache


def test_warn_mode_warns_once_and_changes_nothing(leaky, caplog):
    prepared._WARNED.clear()
    with caplog.at_level(logging.WARNING):
        p = data.prepare(cfg_for(leaky, "warn"))
        data.prepare(cfg_for(leaky, "warn"))
    lines = [r.getMessage() for r in caplog.records if "duplicates found" in r.getMessage()]
    assert len(lines) == 1 and "train/test: 0 exact + 2 near (1 with a different label)" in lines[0]
    assert "dataset.duplicates=drop or error" in lines[0]
    assert p.info.fingerprint() == data.scan(leaky).fingerprint() and p.mode == "warn"
    assert len(p.duplicates.pairs) == 4 and p.duplicates.dropped == []


def test_drop_mode_removes_the_later_copies_and_changes_the_fingerprint(leaky):
    p = data.prepare(cfg_for(leaky, "drop"))
    assert p.duplicates.dropped == ["validation/a/copy.png", "test/b/brighter.png", "test/b/resized.jpg"]
    kept = {s: sorted(e.rel for e in p.info.files[s]) for s in data.SPLITS}
    assert kept["validation"] == ["validation/a/own.png", "validation/b/own.png"]
    assert kept["test"] == ["test/a/own.png", "test/b/own.png"]
    assert len(kept["train"]) == 9  # train never changes, its own repeat included
    assert p.info.counts["test"] == {"a": 1, "b": 1}
    assert p.info.fingerprint() != data.scan(leaky).fingerprint()
    # What drop leaves has no leak left: scanning it again finds only the within-train pair.
    assert [q.cross for q in duplicates.find(p.info).pairs] == [False]


def test_drop_mode_that_empties_a_class_says_so(tmp_path):
    root = leaky_folder(tmp_path / "l")
    (root / "validation/a/own.png").unlink()
    with pytest.raises(data.DataError) as e:
        data.prepare(cfg_for(root, "drop"))
    assert "validation/a" in str(e.value) and "dataset.duplicates=warn" in str(e.value)


def test_error_mode_lists_the_pairs_and_the_fix(leaky):
    with pytest.raises(data.DataError) as e:
        data.prepare(cfg_for(leaky, "error"))
    msg = str(e.value)
    assert "3 image pair(s)" in msg and str(leaky) in msg
    assert "train/a/0.png [train] = validation/a/copy.png [validation] (exact)" in msg
    assert "train/a/1.png [train] = test/b/resized.jpg [test] (near, different label)" in msg
    assert "within train" not in msg  # the pairs across splits only (the count says 3)
    assert "dataset.duplicates=drop" in msg


def test_within_split_repeats_alone_do_not_stop_error_mode(tmp_path):
    root = leaky_folder(tmp_path / "l")
    for f in ("validation/a/copy.png", "test/b/resized.jpg", "test/b/brighter.png"):
        (root / f).unlink()
    p = data.prepare(cfg_for(root, "error"))
    assert [q.split_a + "/" + q.split_b for q in p.duplicates.pairs] == ["train/train"]


def test_scan_cache_keeps_phash_and_size(leaky):
    first = data.scan(leaky)
    again = data.scan(leaky)  # from scan.json
    e1 = {e.rel: e for s in data.SPLITS for e in first.files[s]}
    e2 = {e.rel: e for s in data.SPLITS for e in again.files[s]}
    assert e1 == e2 and e1["test/b/resized.jpg"].width == 48 and e1["test/b/resized.jpg"].height == 36


# -- statistics and class weights ------------------------------------------------------------


def test_dataset_stats_counts_imbalance_and_size_range(tmp_path):
    root = tmp_path / "imb"
    for split, (na, nb) in (("train", (6, 2)), ("validation", (2, 1)), ("test", (3, 1))):
        for cls, n in (("ok", na), ("defect", nb)):
            for i in range(n):
                size = (40 + i, 30) if cls == "ok" else (64, 48 + i)
                save(scene(hash((split, cls, i)) % 10_000, size), root / split / cls / f"{i}.png")
    s = stats.dataset_stats(data.scan(root))
    assert s["classes"] == ["defect", "ok"]
    assert s["counts"]["train"] == {"defect": 2, "ok": 6} and s["images"] == {"train": 8, "validation": 3, "test": 4}
    assert s["imbalance_ratio"] == 3.0
    assert s["image_size"] == {"min_width": 40, "max_width": 64, "min_height": 30, "max_height": 49}
    tags = stats.stats_tags(s)
    assert tags == {"dataset_images": "train 8 · validation 3 · test 4", "dataset_classes": "2",
                    "imbalance_ratio": "3.00", "image_size_range": "40-64 x 30-49"}
    w = stats.class_weights(data.scan(root))
    assert w == pytest.approx({0: 8 / (2 * 2), 1: 8 / (2 * 6)})  # n / (k * n_c)


def test_log_dataset_writes_tags_and_artifacts(leaky):
    from transferlab.runner import datarecord

    class Client:
        tags, texts = {}, {}

        def log_batch(self, run_id, tags=()):
            self.tags.update({t.key: t.value for t in tags})

        def log_text(self, run_id, text, name):
            self.texts[name] = text

    c = Client()
    st = datarecord.log_dataset(c, "r1", data.prepare(cfg_for(leaky, "drop")))
    assert c.tags["duplicates_policy"] == "drop" and c.tags["duplicates_dropped"] == "3"
    assert c.tags["duplicates"].startswith("train/validation: 1 exact + 0 near")
    assert c.tags["dataset_images"] == "train 9 · validation 2 · test 2"
    assert c.texts["duplicates.csv"].count("\n") == 5
    assert '"dropped"' in c.texts["dataset_stats.json"] and st["duplicates"]["policy"] == "drop"
    assert st["fingerprint"] == data.prepare(cfg_for(leaky, "drop")).info.fingerprint()


def test_jpeg_copies_hash_like_their_source(tmp_path):
    """The scan hashes JPEGs at their draft scale: a 500x375 photo and its PNG twin agree."""
    big = scene(5, (500, 375))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    Image.open(io.BytesIO(buf.getvalue())).save(tmp_path / "a.png")
    from transferlab.data import imagecheck

    a, b = imagecheck.check(tmp_path / "a.jpg"), imagecheck.check(tmp_path / "a.png")
    assert (a.width, a.height) == (500, 375)
    assert bin(int(a.phash, 16) ^ int(b.phash, 16)).count("1") <= 2


def test_copy_groups_are_listed_against_their_anchor_and_near_links_reach_every_copy(tmp_path):
    """One picture in train + 2 validation + 2 test byte copies: 4 pairs (not 10), each
    against the train file. Two byte-identical test files near a train picture: both
    listed, both dropped."""
    root = tmp_path / "g"
    for k, cls in enumerate("ab"):
        save(scene(k), root / "train" / cls / "0.png")
        for j, split in enumerate(("validation", "test")):
            save(scene(50 + 2 * k + j), root / split / cls / "own.png")
    for split in ("validation", "test"):
        for i in range(2):
            shutil.copyfile(root / "train/a/0.png", root / split / "a" / f"copy{i}.png")
    save(ImageEnhance.Brightness(scene(1)).enhance(1.1), root / "test/b/x1.png")
    shutil.copyfile(root / "test/b/x1.png", root / "test/b/x2.png")
    info = data.scan(root)
    found = duplicates.find(info)
    exact = [(p.path_a, p.path_b) for p in found.pairs if p.kind == "exact"]
    assert sorted(exact) == sorted([("train/a/0.png", f"{s}/a/copy{i}.png")
                                    for s in ("validation", "test") for i in range(2)] +
                                   [("test/b/x1.png", "test/b/x2.png")])
    near = sorted((p.path_a, p.path_b) for p in found.pairs if p.kind == "near")
    assert near == [("train/b/0.png", "test/b/x1.png"), ("train/b/0.png", "test/b/x2.png")]
    kept = duplicates.drop(info, found)
    assert sorted(e.rel for e in kept.files["test"]) == ["test/a/own.png", "test/b/own.png"]


def test_many_copies_of_one_file_stay_linear():
    """10,000 files holding 20 contents (placeholder images): 9,980 pairs, in well under a second
    (listing every pair of a group would be 2.5 million)."""
    from pathlib import Path

    from transferlab.data.folder import DatasetInfo, Entry

    files = {s: [Entry(f"{s}/c/{i}.jpg", "/nonexistent", i % 2, digest=f"d{i % 20}",
                       phash=f"{(i % 20) * 7919:016x}") for i in range(n)]
             for s, n in (("train", 7000), ("validation", 1500), ("test", 1500))}
    info = DatasetInfo(Path("/x"), ["c0", "c1"], {s: {} for s in files}, files, [], [])
    t0 = time.perf_counter()
    found = duplicates.find(info)
    assert len(found.pairs) == 10_000 - 20 and time.perf_counter() - t0 < 5
    assert found.counts()["train/test"]["exact"] == 1500


def test_one_folder_of_classes_is_checked_after_its_split(tmp_path):
    """A flat folder (split by dataset.split): copies are compared in the splits the
    assignment gave them; drop leaves no copy across splits."""
    root = tmp_path / "flat"
    for k, cls in enumerate("ab"):
        for i in range(10):
            save(scene(300 + 20 * k + i), root / cls / f"{i}.png")
    for i in range(4):
        shutil.copyfile(root / "a/0.png", root / "a" / f"copy{i}.png")
    cfg = OmegaConf.create({"dataset": {"name": "folder", "path": str(root), "duplicates": "warn",
                                        "split": [0.6, 0.2, 0.2], "split_seed": 0}})
    p = data.prepare(cfg)
    where = {e.rel: s for s in data.SPLITS for e in p.info.files[s]}
    assert len(p.duplicates.pairs) == 4  # 5 byte-identical files: 4 pairs against the first
    assert all((where[q.path_a], where[q.path_b]) == (q.split_a, q.split_b) for q in p.duplicates.pairs)
    assert any(q.cross for q in p.duplicates.pairs)  # with split_seed 0 the copies span splits
    cfg.dataset.duplicates = "drop"
    dropped = data.prepare(cfg)
    assert not [q for q in duplicates.find(dropped.info).pairs if q.cross]
    assert len(dropped.duplicates.dropped) == sum(q.cross for q in p.duplicates.pairs)
