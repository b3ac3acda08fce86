"""Image folders in, batched ``tf.data`` pipelines out.

A dataset is a folder with one sub-folder per split, each holding one
sub-folder of images per class::

    <path>/train/<class>/*.jpg
    <path>/validation/<class>/*.jpg
    <path>/test/<class>/*.jpg

``scan`` checks that layout and every file in it without TensorFlow (Pillow,
see imagecheck.py), so a bad folder fails before training and a corrupt file
never reaches ``tf.io.decode_image`` mid-epoch:

- kept as they are: images TF decodes right (JPEG incl. ``.JPG``, CMYK,
  grayscale; PNG in any mode and bit depth; GIF; RGB BMP; WebP);
- kept, converted once: images TF cannot decode or decodes wrongly (TIFF,
  1-bit and palette BMP), written as RGB PNGs into the cache folder, keyed by
  path + size + mtime;
- skipped, with the reason: hidden files (``.DS_Store``, ``._x.jpg``),
  non-images (``Thumbs.db``, ``notes.txt``), truncated or corrupt images.

Verdicts are cached too (``<cache>/scan.json``), so scanning again (every job
of a sweep does) only stats the files. The cache folder is
``$TRANSFERLAB_CACHE/<hash of the dataset path>`` if set, else
``<dataset>/.transferlab_cache``, else (read-only dataset)
``~/.cache/transferlab/<hash>``. ``load`` builds the pipelines with the ops of
Keras' ``image_dataset_from_directory`` from that file list. TensorFlow is
imported inside ``load`` only.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlab.data import imagecheck

SPLITS = ("train", "validation", "test")
_LAYOUT = "expected <dataset>/{train,validation,test}/<class name>/<images>"
log = logging.getLogger(__name__)


class DataError(ValueError):
    """A user-facing dataset error; its message names the folder and the fix."""


@dataclass(frozen=True)
class Entry:
    """One kept image: ``rel`` relative to the dataset root (``train/cats/x.jpg``),
    ``source`` the file TF decodes (the image itself or its converted PNG)."""

    rel: str
    source: str
    label: int
    digest: str = ""  # sha1 of the file's bytes
    phash: str = ""  # perceptual hash, 16 hex digits (imagecheck.perceptual_hash)
    width: int = 0  # stored pixel size
    height: int = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What ``scan`` found.

    Attributes:
        path: The dataset folder.
        class_names: Class folder names, sorted as Keras sorts them; the label
            of a class is its index here.
        counts: ``counts[split][class]`` is the number of kept images.
        files: ``files[split]``: the kept images, sorted by path.
        skipped: ``"<rel path>: <reason>"`` of every file not used, e.g.
            ``"train/cats/bad.jpg: truncated"``.
        converted: ``"<rel path>: <format> <mode>"`` of the kept images that
            TF reads from a converted RGB PNG.
    """

    path: Path
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    files: dict[str, list[Entry]]
    skipped: list[str]
    converted: list[str]

    def fingerprint(self) -> str:
        """sha256 over every kept image's split/class path, label and content digest.

        Adding, removing, relabelling (moving between class folders) or editing
        an image changes it; moving the whole folder elsewhere does not. Part
        of the config hash, so a finished job is never answered for other data.
        """
        h = hashlib.sha256()
        for split in SPLITS:
            for e in self.files[split]:
                h.update(f"{e.rel}\0{e.label}\0{e.digest}\n".encode())
        return h.hexdigest()[:16]


@dataclass
class Splits:
    """The three pipelines and what a caller needs to interpret them.

    Attributes:
        train: Shuffled (and repeated if asked) batches of ``(image, label)``.
        validation: Batches in file order.
        test: Batches in file order, the order of ``test_paths``.
        test_paths: Image paths relative to the test split folder
            (``"<class>/<file>"``), in the order ``test`` yields them.
        class_names: Label index -> class name.
        num_classes: ``len(class_names)``; 2 means binary labels of shape (1,).
        counts: Number of images per split.
        skipped, converted: As in ``DatasetInfo``.
    """

    train: Any
    validation: Any
    test: Any
    test_paths: list[str]
    class_names: list[str]
    num_classes: int
    counts: dict[str, int]
    skipped: list[str]
    converted: list[str]


def _visible(names) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _class_files(folder: Path, root: Path) -> list[str]:
    """Every file below ``folder`` (hidden folders pruned), relative to ``root``, sorted."""
    out = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = _visible(dirs)
        out += [(Path(here) / f).relative_to(root).as_posix() for f in files]
    return sorted(out)


def _layout(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Class names and the split-level stray files; DataError if the layout is wrong."""
    if not path.is_dir():
        raise DataError(f"Dataset folder {path} does not exist or is not a folder; {_LAYOUT}.")
    class_names: list[str] = []
    stray: dict[str, list[str]] = {}
    for split in SPLITS:
        split_dir = path / split
        if not split_dir.is_dir():
            raise DataError(f"Missing split folder {split_dir}; {_LAYOUT}. "
                            f"Create it and move part of your images there.")
        classes = _visible(p.name for p in split_dir.iterdir() if p.is_dir())
        stray[split] = sorted(f"{split}/{p.name}" for p in split_dir.iterdir() if p.is_file())
        if not classes:
            raise DataError(f"{split_dir} has no class sub-folders; put each class's images "
                            f"in its own folder, e.g. {split_dir / '<class name>'}/*.jpg.")
        if split == SPLITS[0]:
            class_names = classes
            if len(classes) < 2:
                raise DataError(f"{split_dir} has only the class folder {classes}; "
                                "classification needs at least 2 class folders.")
        elif classes != class_names:
            missing = sorted(set(class_names) - set(classes))
            extra = sorted(set(classes) - set(class_names))
            raise DataError(f"The class folders of split '{split}' ({split_dir}) differ from "
                            f"train's: missing {missing}, extra {extra}. Every split needs "
                            "the same class folders (rename, add or remove them).")
    return class_names, stray


def scan(path, cache_dir=None) -> DatasetInfo:
    """Checks the folder layout and every file in it, without TensorFlow.

    Args:
        path: The dataset folder (str or Path).
        cache_dir: Where converted images and scan verdicts go; default
            ``imagecheck.default_cache_dir(path)``.

    Returns:
        The classes (sorted), kept images per split, skipped and converted files.

    Raises:
        DataError: The folder or a split folder is missing, a split has no
            class folders (or fewer than 2), the class folders differ from
            train's, a class folder holds no usable image, or the cache folder
            cannot be written.
    """
    path = Path(path).expanduser().absolute()
    class_names, stray = _layout(path)
    per_class = {(s, c): _class_files(path / s / c, path) for s in SPLITS for c in class_names}
    cache = Path(cache_dir) if cache_dir else imagecheck.default_cache_dir(path)
    try:
        every = [rel for rels in per_class.values() for rel in rels]
        found = imagecheck.check_files(path, every, cache)
    except OSError as e:  # a file vanished meanwhile, or the cache is not writable
        raise DataError(f"Scanning {path} failed: {e}. Rerun once the folder is stable; if "
                        f"{cache} cannot be written, set TRANSFERLAB_CACHE=<writable "
                        "folder>.") from e
    skipped = [f"{rel}: not in a class folder" for s in SPLITS for rel in stray[s]]
    converted: list[str] = []
    files: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for (split, name), rels in per_class.items():
        kept = []
        for rel in rels:
            kind, detail, source, digest, extra = found[rel]
            if kind == imagecheck.SKIP:
                skipped.append(f"{rel}: {detail}")
                continue
            if kind == imagecheck.CONVERT:
                converted.append(f"{rel}: {detail}")
            kept.append(Entry(rel, source, class_names.index(name), digest,
                              phash=extra.get("phash", ""), width=extra.get("width", 0),
                              height=extra.get("height", 0)))
        if not kept:
            bad = [s for s in skipped if s.startswith(f"{split}/{name}/")]
            raise DataError(f"Class folder {path / split / name} has no usable image"
                            + (f" ({len(bad)} skipped: {'; '.join(bad[:5])}"
                               f"{' ...' if len(bad) > 5 else ''})" if bad else "")
                            + "; add images (JPEG, PNG, GIF, BMP, WebP, TIFF) or remove this "
                            "class folder from every split.")
        files[split] += kept
        counts[split][name] = len(kept)
    if skipped:
        log.warning("%s: %d file(s) skipped: %s%s", path, len(skipped), "; ".join(skipped[:10]),
                    " ..." if len(skipped) > 10 else "")
    if converted:
        log.info("%s: %d image(s) converted to RGB PNG for TensorFlow, in %s",
                 path, len(converted), cache / "converted")
    return DatasetInfo(path=path, class_names=class_names, counts=counts, files=files,
                       skipped=skipped, converted=converted)


def _decode(path, image_size: int):
    """What Keras' image_dataset_from_directory does per file (color_mode="rgb", bilinear)."""
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    img = tf.image.resize(img, (image_size, image_size), method="bilinear")  # float32, 0..255
    img.set_shape((image_size, image_size, 3))
    return img


def _fill_cache(ds, images: list[Entry], info: DatasetInfo) -> None:
    """Decodes a cached split once, now: a file TF cannot read fails here, by name."""
    import tensorflow as tf

    try:
        for _ in ds.batch(256):
            pass
    except tf.errors.OpError:
        for im in images:  # error path only: find the culprit
            try:
                _decode(im.source, 8)
            except tf.errors.OpError as e:
                raise DataError(
                    f"TensorFlow cannot read {info.path / im.rel} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}); it changed or vanished since the scan, "
                    "or TF rejects what Pillow accepted. Delete or re-save it.") from e
        raise


def load(info: DatasetInfo, image_size: int, batch_size: int, seed: int,
         repeat_train: bool = False) -> Splits:
    """Builds the train/validation/test pipelines from ``scan``'s kept images.

    Images are float32 in 0..255 of shape ``(image_size, image_size, 3)``: no
    scaling here, since each backbone's ``preprocess_input`` runs inside the
    model. Labels are float32 0/1 of shape (1,) for 2 classes (binary
    cross-entropy), else one-hot of shape (num_classes,) (categorical). Every
    split is decoded once here and served from memory afterwards.

    Args:
        info: The result of ``scan``.
        image_size: Side length images are resized to (bilinear).
        batch_size: Batch size of all three pipelines.
        seed: Seeds the train shuffle: each epoch gets a new order, and the
            sequence of orders is the same in every run with this seed.
        repeat_train: Repeat train forever (then pass ``steps_per_epoch``).

    Raises:
        DataError: A kept file cannot be read by TensorFlow (names it).
    """
    import numpy as np
    import tensorflow as tf

    k = len(info.class_names)
    pipelines, counts = {}, {}
    for split in SPLITS:
        images = info.files[split]
        labels = np.array([im.label for im in images])
        y = labels[:, None].astype(np.float32) if k == 2 else np.eye(k, dtype=np.float32)[labels]
        ds = tf.data.Dataset.from_tensor_slices(([im.source for im in images], y))
        ds = ds.map(lambda p, t: (_decode(p, image_size), t),
                    num_parallel_calls=tf.data.AUTOTUNE).cache()  # map keeps the order
        _fill_cache(ds, images, info)
        counts[split] = len(images)
        if split == "train":
            # A buffer as large as the split is a full shuffle; a fresh order
            # each epoch, yet the sequence of orders is fixed by the seed.
            ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
            if repeat_train:
                ds = ds.repeat()
        pipelines[split] = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    test_paths = [im.rel.split("/", 1)[1] for im in info.files["test"]]
    return Splits(**pipelines, test_paths=test_paths, class_names=list(info.class_names),
                  num_classes=k, counts=counts, skipped=list(info.skipped),
                  converted=list(info.converted))
