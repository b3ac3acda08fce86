"""Folder layouts, the stratified split from split_seed, k-fold, their errors and config.

TF-free and fast: tiny PNGs written here, the assignment tested on plain names.
"""

import shutil
import sys
from collections import Counter, namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab import data
from transferlab.config import ConfigError, kfold
from transferlab.data import SPLITS, DataError, SplitSpec, assign, layout
from transferlab.runner.validate import validate

Item = namedtuple("Item", "rel")


def write_images(folder: Path, n: int, start: int = 0, seed: int = 0) -> None:
    """``n`` distinct 8x8 PNGs ``img_<i>.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        px = np.random.default_rng([seed, i, len(folder.name)]).integers(0, 255, (8, 8, 3))
        Image.fromarray(px.astype(np.uint8)).save(folder / f"img_{i}.png")


@pytest.fixture
def flat(tmp_path):
    """One folder of classes: a 20, b 12, c 7 images."""
    root = tmp_path / "flat"
    for name, n in (("a", 20), ("b", 12), ("c", 7)):
        write_images(root / name, n)
    return root


def where(info) -> dict[str, str]:
    """rel -> split of every kept image."""
    return {e.rel: s for s in SPLITS for e in info.files[s]}


# --- flat: one folder of classes ------------------------------------------

def test_flat_folder_is_split_stratified_with_the_default_fractions(flat):
    info = data.scan(flat)
    assert info.layout == "flat" and info.class_names == ["a", "b", "c"]
    # round(n * 0.1) per class, at least one: exact per-class proportions
    assert info.counts == {"train": {"a": 16, "b": 10, "c": 5},
                           "validation": {"a": 2, "b": 1, "c": 1},
                           "test": {"a": 2, "b": 1, "c": 1}}
    every = [e.rel for s in SPLITS for e in info.files[s]]
    assert len(every) == len(set(every)) == 39  # a partition
    assert all(e.rel.startswith(("a/", "b/", "c/")) for e in info.files["test"])  # root-relative
    assert [info.split_path(e) for e in info.files["test"]] == [e.rel for e in info.files["test"]]
    for s in SPLITS:
        assert [e.rel for e in info.files[s]] == sorted(e.rel for e in info.files[s])
        assert all(info.class_names[e.label] == e.rel.split("/")[0] for e in info.files[s])


def test_the_split_depends_on_split_seed_alone(flat, tmp_path):
    first = where(data.scan(flat))
    assert where(data.scan(flat, cache_dir=tmp_path / "other_cache")) == first  # no state
    assert where(data.scan(flat, split=SplitSpec(seed=0))) == first
    other = data.scan(flat, split=SplitSpec(seed=1))
    assert where(other) != first  # another split_seed: another split ...
    assert other.counts == data.scan(flat).counts  # ... with the same per-class counts
    assert other.fingerprint() != data.scan(flat).fingerprint()  # the assignment is hashed


def test_sweeping_seed_keeps_the_split(compose, flat):
    base = ["dataset=folder", f"dataset.path={flat}"]
    a, b = compose([*base, "seed=1"]), compose([*base, "seed=2"])
    assert SplitSpec.from_config(a.dataset) == SplitSpec.from_config(b.dataset)
    assert data.scan_job(a).fingerprint() == data.scan_job(b).fingerprint()
    c = compose([*base, "dataset.split_seed=5"])
    assert data.scan_job(c).fingerprint() != data.scan_job(a).fingerprint()


def test_adding_images_moves_few_others(flat):
    before = where(data.scan(flat))
    write_images(flat / "a", 1, start=20)  # a: 20 -> 21 images
    after = where(data.scan(flat))
    moved = [r for r in before if after[r] != before[r]]
    assert len(moved) <= 2, moved  # at most one per block boundary
    write_images(flat / "a", 10, start=21)  # 31: counts change, still local
    later = where(data.scan(flat))
    assert sum(later[r] != before[r] for r in before) <= 4


@pytest.mark.parametrize("n", range(3, 41))
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.7, 0.3, 0.0),
                                       (0.34, 0.33, 0.33)])
def test_counts_are_exact_per_class_and_fill_every_split(n, fractions):
    got = assign.counts(n, fractions, "class x")
    assert sum(got) == n and got[0] >= 1
    for share, k in zip(fractions[1:], got[1:]):
        if share == 0:
            assert k == 0
        else:  # the nearest count, or 1 where that would leave the split empty
            assert k >= 1 and (abs(k - n * share) <= 0.5 or k == 1 or got[0] == 1)


def test_assign_is_a_stable_hash_order_not_a_shuffle_of_everything():
    items = [Item(f"a/{i:03d}.png") for i in range(200)]
    spec = SplitSpec(fractions=(0.8, 0.1, 0.1), seed=7)
    files, _ = assign.assign("flat", {("", "a"): items}, ["a"], spec)
    old = {i.rel: s for s in SPLITS for i in files[s]}
    items2 = items + [Item(f"a/new_{i}.png") for i in range(20)]  # +10%
    files2, _ = assign.assign("flat", {("", "a"): items2}, ["a"], spec)
    new = {i.rel: s for s in SPLITS for i in files2[s]}
    moved = sum(old[r] != new[r] for r in old)
    assert moved <= 6, moved  # a reshuffle would move ~60 of the 200
    assert Counter(new.values()) == {"train": 176, "validation": 22, "test": 22}


# --- train/ + test/: validation carved from train ------------------------------------

@pytest.fixture
def train_test(tmp_path):
    root = tmp_path / "tt"
    for name in ("a", "b"):
        write_images(root / "train" / name, 18)
        write_images(root / "test" / name, 4, seed=1)
    return root


def test_train_and_test_carve_validation_from_train(train_test):
    info = data.scan(train_test)
    assert info.layout == "train_test"
    # default validation share 0.1 / (0.8 + 0.1) of train: 2 of 18
    assert info.counts == {"train": {"a": 16, "b": 16}, "validation": {"a": 2, "b": 2},
                           "test": {"a": 4, "b": 4}}
    assert all(e.rel.startswith("train/") for e in info.files["validation"])
    assert {e.rel for e in info.files["test"]} == {
        p.relative_to(train_test).as_posix() for p in (train_test / "test").rglob("*.png")}
    assert [info.split_path(e) for e in info.files["test"]][0] == "a/img_0.png"
    wider = data.scan(train_test, split=SplitSpec(fractions=(0.6, 0.2, 0.2)))
    assert wider.counts["validation"] == {"a": 5, "b": 5}  # 0.2 / 0.8 of 18 = 4.5 -> 5
    assert wider.counts["test"] == info.counts["test"]  # given: the test share is not used


def test_a_folder_split_in_three_is_used_as_it_is(train_test):
    shutil.copytree(train_test / "test", train_test / "validation")
    info = data.scan(train_test)
    assert info.layout == "split" and info.counts["train"] == {"a": 18, "b": 18}
    assert all(e.rel.startswith("validation/") for e in info.files["validation"])
    with pytest.raises(DataError, match=r"dataset.split=\[0.7, 0.2, 0.1\]: this folder already "
                                        r"holds train/, validation/ and test/.*Fix: remove"):
        data.scan(train_test, split=SplitSpec(fractions=(0.7, 0.2, 0.1)))


# --- errors say what was found --------------------------------------------

def test_files_without_class_folders_are_named(tmp_path):
    write_images(tmp_path / "loose", 12)
    with pytest.raises(DataError) as e:
        data.scan(tmp_path / "loose")
    msg = str(e.value)
    assert "found no folders and 12 files" in msg
    assert "<dataset>/<class>/<images>" in msg and "<dataset>/{train,test}" in msg


def test_split_folders_without_test_are_named(tmp_path):
    for s in ("train", "validation", "extra"):
        write_images(tmp_path / "ds" / s / "a", 3)
    with pytest.raises(DataError, match=r"found folders extra, train, validation and 0 files: "
                                        r"split folder\(s\) train, validation but no test/"):
        data.scan(tmp_path / "ds")


def test_one_class_folder_is_refused(tmp_path):
    write_images(tmp_path / "ds" / "only", 5)
    with pytest.raises(DataError, match=r"found folder only and 0 files: only the class folder"):
        data.scan(tmp_path / "ds")


def test_too_small_class_names_itself_and_its_count(flat):
    shutil.rmtree(flat / "c")
    write_images(flat / "c", 2)
    with pytest.raises(DataError, match=r"Class folder c has 2 usable images; splitting it into "
                                        r"train/validation/test needs at least 3"):
        data.scan(flat)
    with pytest.raises(DataError, match=r"dataset.split=\[0.9, 0.1, 0.0\] leaves no test split"):
        data.scan(flat, split=SplitSpec(fractions=(0.9, 0.1, 0.0)))


# --- k-fold ------------------------------------------------------------------

def test_folds_partition_the_pool_and_hold_test_out(flat):
    plain = data.scan(flat)
    pool = {e.rel for s in ("train", "validation") for e in plain.files[s]}
    seen, prints = [], set()
    for k in range(3):
        info = data.scan(flat, split=SplitSpec(folds=3, fold=k))
        assert [e.rel for e in info.files["test"]] == [e.rel for e in plain.files["test"]]
        val = {e.rel for e in info.files["validation"]}
        assert val | {e.rel for e in info.files["train"]} == pool
        assert not val & {e.rel for e in info.files["train"]}
        assert all(info.counts["validation"][c] >= 2 for c in info.class_names)  # stratified
        assert {r for r, f in info.folds.items() if f == k} == val
        seen.append(val)
        prints.add(info.fingerprint())
    assert set.union(*seen) == pool and sum(map(len, seen)) == len(pool)  # each image once
    assert len(prints) == 3  # each fold its own data fingerprint


def test_fold_sizes_differ_by_at_most_one_per_class(flat):
    info = data.scan(flat, split=SplitSpec(folds=4, fold=0))
    per = Counter((r.split("/")[0], f) for r, f in info.folds.items())
    for c, n in (("a", 18), ("b", 11), ("c", 6)):
        sizes = [per[(c, f)] for f in range(4)]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_more_folds_than_images_of_a_class(flat):
    with pytest.raises(DataError, match=r"Class 'c' has 6 images in train \+ validation; "
                                        r"dataset.folds=7 needs at least 7"):
        data.scan(flat, split=SplitSpec(folds=7, fold=0))


def test_folds_on_train_and_test_use_all_of_train(train_test):
    info = data.scan(train_test, split=SplitSpec(folds=3, fold=2))
    assert info.counts["validation"] == {"a": 6, "b": 6}
    assert info.counts["train"] == {"a": 12, "b": 12}


# --- logged split -------------------------------------------------------------

def test_split_csv_lists_every_image_with_its_split_and_fold(flat):
    from transferlab.runner.splitlog import split_csv

    info = data.scan(flat, split=SplitSpec(folds=2, fold=1))
    lines = split_csv(info).splitlines()
    assert lines[0] == "path,class,split,fold"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 39 and {r[2] for r in rows} == set(SPLITS)
    assert all(r[3] == "" for r in rows if r[2] == "test")
    assert all(r[3] == "1" for r in rows if r[2] == "validation")
    assert split_csv(data.scan(flat)).splitlines()[0] == "path,class,split"


# --- config -------------------------------------------------------------------

@pytest.mark.parametrize("override,words", [
    ("dataset.split=[0.8,0.1]", ["[0.8, 0.1]", "three fractions"]),
    ("dataset.split=[0.8,0.1,0.2]", ["sums to 1.1", "Fix: e.g. dataset.split=[0.8,0.1,0.1]"]),
    ("dataset.split=[1.0,0.0,0.0]", ["train and validation > 0"]),
    ("dataset.split=[0.9,0.2,-0.1]", [">= 0"]),
    ("dataset.folds=1", ["dataset.folds=1", "at least 2"]),
    ("dataset.fold=0", ["dataset.fold=0 needs dataset.folds"]),
    ("dataset.folds=3", ["without dataset.fold", "dataset.fold=<0..2>", "run.py -m"]),
])
def test_bad_split_values_are_named(compose, override, words):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    for w in words:
        assert w in str(e.value)


def test_fold_out_of_range(compose):
    with pytest.raises(ConfigError, match=r"dataset.fold=3 is out of range for dataset.folds=3"):
        validate(compose(["dataset.folds=3", "dataset.fold=3"]))
    validate(compose(["dataset.folds=3", "dataset.fold=2", "dataset.split=[0.7,0.2,0.1]"]))


def test_folds_alone_become_a_sweep_over_fold(capsys):
    assert kfold.expand(["-m", "lr=1e-3,1e-4", "dataset.folds=3"]) == (
        ["-m", "lr=1e-3,1e-4", "dataset.folds=3", "dataset.fold=0,1,2"], True)
    argv, done = kfold.expand(["dataset.folds=2"])  # a plain run: every fold, said so
    assert done and argv == ["-m", "dataset.folds=2", "dataset.fold=0,1"]
    assert "every fold runs" in capsys.readouterr().out
    for given in (["-m", "dataset.folds=3", "dataset.fold=1"], ["dataset.folds=3", "dataset.fold=0,2"],
                  ["-m", "lr=1"], ["dataset.folds=null"], ["--cfg", "job", "dataset.folds=3"]):
        assert kfold.expand(given) == (given, False)
    with pytest.raises(ConfigError, match="dataset.folds=3,5: one integer"):
        kfold.expand(["-m", "dataset.folds=3,5"])


def test_the_scan_stays_free_of_tensorflow(flat):
    import subprocess

    code = ("import sys; from transferlab import data; "
            f"data.scan({str(flat)!r}, split=data.SplitSpec(folds=2, fold=0)); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
