"""Image folders in, batched ``tf.data`` pipelines out.

A dataset is a folder with one sub-folder per split, each holding one
sub-folder of images per class::

    <path>/train/<class>/*.jpg
    <path>/validation/<class>/*.jpg
    <path>/test/<class>/*.jpg

``scan`` checks that layout and every file in it without TensorFlow, with
the decoder training uses (Pillow, data/decode.py; verdicts in imagecheck.py),
so a bad folder fails before training and a file the scan keeps is one every
job decodes:

- kept: JPEG (incl. ``.JPG``, CMYK, grayscale), PNG in any mode and bit
  depth, GIF, BMP, WebP, TIFF; EXIF orientation is recorded per image and
  applied when decoding (``DatasetInfo.rotated()``);
- skipped, with the reason: hidden files (``.DS_Store``, ``._x.jpg``),
  non-images (``Thumbs.db``, ``notes.txt``), truncated or corrupt images,
  dangling symlinks, images above ``dataset.max_image_pixels``.

Symlinks are followed: a symlinked class folder, sub-folder or file counts as
if it were there (a sub-folder reached twice, e.g. a link to a parent, once).

Verdicts are cached too (``<cache>/scan.json``), so scanning again (every job
of a sweep does) only stats the files. The cache folder is
``$TRANSFERLAB_CACHE/<hash of the dataset path>`` if set, else
``<dataset>/.transferlab_cache``, else (read-only dataset)
``~/.cache/transferlab/<hash>``. ``load`` builds the pipelines with the ops of
Keras' ``image_dataset_from_directory`` from that file list (data/pipeline.py,
data/store.py). TensorFlow is imported inside ``load`` only.
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
    ``source`` the file decoded (absolute path through the dataset folder),
    ``orientation`` its EXIF orientation tag (1 = upright; 2-8: turned when decoded)."""

    rel: str
    source: str
    label: int
    digest: str = ""  # sha1 of the file's bytes
    orientation: int = 1


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
    """

    path: Path
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    files: dict[str, list[Entry]]
    skipped: list[str]

    def rotated(self) -> list[str]:
        """Paths (relative to the dataset) of the kept images an EXIF tag turns upright."""
        return [e.rel for s in SPLITS for e in self.files[s] if e.orientation != 1]

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
        skipped: As in ``DatasetInfo``.
        storage: Where the decoded images live: ``"memory"`` or the path of
            the on-disk store (data/store.py), with its size.
    """

    train: Any
    validation: Any
    test: Any
    test_paths: list[str]
    class_names: list[str]
    num_classes: int
    counts: dict[str, int]
    skipped: list[str]
    storage: str = "memory"


def _visible(names) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _class_files(folder: Path, root: Path) -> list[str]:
    """Every file below ``folder`` (hidden folders pruned), relative to ``root``, sorted.

    Symlinked sub-folders are followed; each real folder (st_dev, st_ino) is
    walked once, so a link to an ancestor or a sibling loops no more. A
    dangling link is listed like a file (the scan skips it with its target).
    """
    out = []
    seen = {_identity(folder)}
    for here, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in _visible(dirs):
            key = _identity(Path(here) / d)
            if key not in seen:
                seen.add(key)
                keep.append(d)
        dirs[:] = keep
        out += [(Path(here) / f).relative_to(root).as_posix() for f in files]
    return sorted(out)


def _identity(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


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


_DEFAULT = object()


def scan(path, cache_dir=None, *, max_pixels=_DEFAULT, progress: bool = False) -> DatasetInfo:
    """Checks the folder layout and every file in it, without TensorFlow.

    Args:
        path: The dataset folder (str or Path).
        cache_dir: Where scan verdicts (and data/store.py's image stores) go;
            default ``imagecheck.default_cache_dir(path)``.
        max_pixels: Images with more pixels are skipped as too large; default
            ``dataset.max_image_pixels``'s, None: no limit.
        progress: A progress bar (count, rate, ETA) when checking takes > 2 s.

    Returns:
        The classes (sorted), kept images per split, skipped files.

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
    if max_pixels is _DEFAULT:
        from transferlab.config.schema import DatasetConf

        max_pixels = DatasetConf.max_image_pixels
    try:
        every = [rel for rels in per_class.values() for rel in rels]
        found = imagecheck.check_files(path, every, cache, max_pixels, progress)
    except OSError as e:  # a file vanished meanwhile, or the cache is not writable
        raise DataError(f"Scanning {path} failed: {e}. Rerun once the folder is stable; if "
                        f"{cache} cannot be written, set TRANSFERLAB_CACHE=<writable "
                        "folder>.") from e
    skipped = [f"{rel}: not in a class folder" for s in SPLITS for rel in stray[s]]
    files: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for (split, name), rels in per_class.items():
        kept = []
        for rel in rels:
            v = found[rel]
            if v.kind == imagecheck.SKIP:
                skipped.append(f"{rel}: {v.detail}")
                continue
            kept.append(Entry(rel, str(path / rel), class_names.index(name), v.digest,
                              v.orientation))
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
    return DatasetInfo(path=path, class_names=class_names, counts=counts, files=files,
                       skipped=skipped)
