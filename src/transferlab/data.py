"""Image folders in, batched ``tf.data`` pipelines out.

A dataset is a folder with one sub-folder per split, each holding one
sub-folder of images per class::

    <path>/train/<class>/*.jpg
    <path>/validation/<class>/*.jpg
    <path>/test/<class>/*.jpg

``scan`` checks that layout without TensorFlow, so a bad folder fails in
milliseconds while the config is validated. ``load`` then builds the
pipelines with Keras' own loader. TensorFlow is imported inside ``load`` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")
# Keras' loader accepts exactly these (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

_LAYOUT = "expected <dataset>/{train,validation,test}/<class name>/<images>"


class DataError(ValueError):
    """A user-facing dataset error; its message names the folder and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """What ``scan`` found.

    Attributes:
        path: The dataset folder.
        class_names: Class folder names, sorted as Keras sorts them; the label
            of a class is its index here.
        counts: ``counts[split][class]`` is the number of images.
    """

    path: Path
    class_names: list[str]
    counts: dict[str, dict[str, int]]


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
    """

    train: Any
    validation: Any
    test: Any
    test_paths: list[str]
    class_names: list[str]
    num_classes: int
    counts: dict[str, int]


def _visible(names) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _count_images(folder: Path) -> int:
    """Counts image files below ``folder`` recursively, as Keras does, skipping hidden entries."""
    n = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = _visible(dirs)
        n += sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in _visible(files))
    return n


def scan(path) -> DatasetInfo:
    """Checks the folder layout and counts the images, without TensorFlow.

    Args:
        path: The dataset folder (str or Path).

    Returns:
        The class names (sorted) and per-split, per-class image counts.

    Raises:
        DataError: The folder or a split folder is missing, a split has no
            class folders (or fewer than 2), the class folders differ from
            train's, or a class folder holds no image.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise DataError(f"Dataset folder {path} does not exist or is not a folder; {_LAYOUT}.")
    class_names: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        split_dir = path / split
        if not split_dir.is_dir():
            raise DataError(f"Missing split folder {split_dir}; {_LAYOUT}. "
                            f"Create it and move part of your images there.")
        classes = _visible(p.name for p in split_dir.iterdir() if p.is_dir())
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
        counts[split] = {}
        for name in classes:
            n = _count_images(split_dir / name)
            if n == 0:
                raise DataError(f"Class folder {split_dir / name} has no image file "
                                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove "
                                "this class folder from every split.")
            counts[split][name] = n
    return DatasetInfo(path=path, class_names=class_names, counts=counts)


def _split_dataset(split_dir: Path, info: DatasetInfo, image_size: int, label_mode: str):
    """Keras' loader for one split in file order, plus its relative file paths."""
    import keras

    # shuffle=False keeps ds.file_paths in the order the dataset yields
    # (Keras' map preserves order), which makes test predictions traceable.
    ds = keras.utils.image_dataset_from_directory(
        str(split_dir), labels="inferred", label_mode=label_mode,
        class_names=info.class_names, color_mode="rgb", batch_size=None,
        image_size=(image_size, image_size), shuffle=False,
        interpolation="bilinear", verbose=False)
    paths = [Path(p).relative_to(split_dir).as_posix() for p in ds.file_paths]
    # Keras skips hidden class folders but not hidden files inside them (e.g.
    # macOS "._x.jpg" AppleDouble files, which fail to decode mid-training).
    hidden = [p for p in paths if any(part.startswith(".") for part in p.split("/"))]
    if hidden:
        raise DataError(f"{split_dir} holds hidden image files that Keras would load: "
                        f"{hidden[:5]}{' ...' if len(hidden) > 5 else ''}; delete them or "
                        "move them out of the dataset folder.")
    expected = sum(info.counts[split_dir.name].values())
    if len(paths) != expected:
        raise DataError(f"{split_dir} changed since it was scanned ({expected} images then, "
                        f"{len(paths)} now); rerun once the folder is stable.")
    return ds, paths


def load(info: DatasetInfo, image_size: int, batch_size: int, seed: int,
         repeat_train: bool = False) -> Splits:
    """Builds the train/validation/test pipelines.

    Images are float32 in 0..255 of shape ``(image_size, image_size, 3)``: no
    scaling here, since each backbone's ``preprocess_input`` runs inside the
    model. Labels are float32 0/1 of shape (1,) for 2 classes (binary
    cross-entropy), else one-hot of shape (num_classes,) (categorical).

    Args:
        info: The result of ``scan``.
        image_size: Side length images are resized to (bilinear).
        batch_size: Batch size of all three pipelines.
        seed: Seeds the train shuffle: each epoch gets a new order, and the
            sequence of orders is the same in every run with this seed.
        repeat_train: Repeat train forever (then pass ``steps_per_epoch``).

    Returns:
        The pipelines, the test file order, class names and per-split counts.

    Raises:
        DataError: The folder changed since ``scan``, or holds hidden images.
    """
    import tensorflow as tf

    label_mode = "binary" if len(info.class_names) == 2 else "categorical"
    pipelines, test_paths, counts = {}, [], {}
    for split in SPLITS:
        ds, paths = _split_dataset(info.path / split, info, image_size, label_mode)
        counts[split] = len(paths)
        # Decode and resize once, then serve epochs from memory.
        ds = ds.cache()
        if split == "train":
            # A buffer as large as the split is a full shuffle; a fresh order
            # each epoch, yet the sequence of orders is fixed by the seed.
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
            if repeat_train:
                ds = ds.repeat()
        elif split == "test":
            test_paths = paths
        pipelines[split] = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return Splits(**pipelines, test_paths=test_paths, class_names=list(info.class_names),
                  num_classes=len(info.class_names), counts=counts)
