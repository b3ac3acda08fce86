"""Image folders in, batched ``tf.data`` pipelines out.

A dataset is a folder with one sub-folder per split, each holding one
sub-folder of images per class::

    <path>/train/<class>/*.jpg
    <path>/validation/<class>/*.jpg
    <path>/test/<class>/*.jpg

or ``<path>/{train,test}/<class>/`` (validation carved from train), or one
folder of classes ``<path>/<class>/*.jpg`` split by ``dataset.split``
(layout.py says which; assign.py which image goes where, k-fold included).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.data import assign, imagecheck, layout
from transferlab.data.layout import SPLITS, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One kept image: ``rel`` relative to the dataset root (``train/cats/x.jpg``,
    ``cats/x.jpg`` in a folder of classes),
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
        layout: ``"split"``, ``"train_test"`` or ``"flat"`` (layout.py).
        folds: With ``dataset.folds``: every train + validation image's fold,
            by ``rel``; else empty.
    """

    path: Path
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    files: dict[str, list[Entry]]
    skipped: list[str]
    converted: list[str]
    layout: str = layout.SPLIT
    folds: dict[str, int] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 over every kept image's split, path, label and content digest.

        Adding, removing, relabelling (moving between class folders) or editing
        an image changes it, and so does any change of which split (or fold) an
        image is in; moving the whole folder elsewhere does not. Part of the
        config hash, so a finished job is never answered for other data.
        """
        h = hashlib.sha256()
        for split in SPLITS:
            for e in self.files[split]:
                h.update(f"{split}\0{e.rel}\0{e.label}\0{e.digest}\n".encode())
        return h.hexdigest()[:16]

    def split_path(self, e: Entry) -> str:
        """``e.rel`` relative to its split folder: ``<class>/<file>`` in every layout."""
        return layout.split_relative(self.layout, e.rel)


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


def scan(path, cache_dir=None, split: assign.SplitSpec | None = None) -> DatasetInfo:
    """Checks the folder layout and every file in it, without TensorFlow.

    Args:
        path: The dataset folder (str or Path).
        cache_dir: Where converted images and scan verdicts go; default
            ``imagecheck.default_cache_dir(path)``.
        split: ``dataset.split``/``split_seed``/``folds``/``fold``
            (``assign.SplitSpec.from_config``); default: the folder's own
            split, ``DEFAULT_SPLIT`` where it has none, no folds.

    Returns:
        The classes (sorted), kept images per split, skipped and converted files.

    Raises:
        DataError: The folder is missing or in none of the accepted layouts
            (the message says what it holds), a split has fewer than 2 class
            folders, the class folders differ from train's, a class folder
            holds no usable image, a class is too small for the split or the
            folds, or the cache folder cannot be written.
    """
    path = Path(path).expanduser().absolute()
    lay = layout.detect(path)
    class_names, stray = lay.class_names, lay.stray
    per_class = {(g, c): _class_files(path / g / c, path) for g in lay.groups for c in class_names}
    cache = Path(cache_dir) if cache_dir else imagecheck.default_cache_dir(path)
    try:
        every = [rel for rels in per_class.values() for rel in rels]
        found = imagecheck.check_files(path, every, cache)
    except OSError as e:  # a file vanished meanwhile, or the cache is not writable
        raise DataError(f"Scanning {path} failed: {e}. Rerun once the folder is stable; if "
                        f"{cache} cannot be written, set TRANSFERLAB_CACHE=<writable "
                        "folder>.") from e
    skipped = [f"{rel}: not in a class folder" for rel in stray]
    converted: list[str] = []
    kept_by: dict[tuple[str, str], list[Entry]] = {}
    for (group, name), rels in per_class.items():
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
            where = f"{group}/{name}/" if group else f"{name}/"
            bad = [s for s in skipped if s.startswith(where)]
            raise DataError(f"Class folder {path / group / name} has no usable image"
                            + (f" ({len(bad)} skipped: {'; '.join(bad[:5])}"
                               f"{' ...' if len(bad) > 5 else ''})" if bad else "")
                            + "; add images (JPEG, PNG, GIF, BMP, WebP, TIFF) or remove this "
                            "class folder from every split.")
        kept_by[(group, name)] = kept
    files, folds = assign.assign(lay.kind, kept_by, class_names, split or assign.SplitSpec())
    counts = {s: {name: sum(1 for e in files[s] if e.label == i)
                  for i, name in enumerate(class_names)} for s in SPLITS}
    if skipped:
        log.warning("%s: %d file(s) skipped: %s%s", path, len(skipped), "; ".join(skipped[:10]),
                    " ..." if len(skipped) > 10 else "")
    if converted:
        log.info("%s: %d image(s) converted to RGB PNG for TensorFlow, in %s",
                 path, len(converted), cache / "converted")
    return DatasetInfo(path=path, class_names=class_names, counts=counts, files=files,
                       skipped=skipped, converted=converted, layout=lay.kind, folds=folds)


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
    test_paths = [info.split_path(im) for im in info.files["test"]]
    return Splits(**pipelines, test_paths=test_paths, class_names=list(info.class_names),
                  num_classes=k, counts=counts, skipped=list(info.skipped),
                  converted=list(info.converted))
