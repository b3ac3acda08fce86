"""Image folders in, batched ``tf.data`` pipelines out.

A dataset is a folder with one sub-folder per split, each holding one
sub-folder of images per class::

    <path>/train/<class>/*.jpg
    <path>/validation/<class>/*.jpg
    <path>/test/<class>/*.jpg

or ``<path>/{train,test}/<class>/`` (validation carved from train), or one
folder of classes ``<path>/<class>/*.jpg`` split by ``dataset.split``
(layout.py says which; assign.py which image goes where, k-fold included).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.data import assign, imagecheck, layout
from transferlab.data.layout import SPLITS, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One kept image: ``rel`` relative to the dataset root (``train/cats/x.jpg``,
    ``cats/x.jpg`` in a folder of classes), ``source`` the file decoded (absolute
    path through the dataset folder), ``orientation`` its EXIF orientation tag
    (1 = upright; 2-8: turned when decoded)."""

    rel: str
    source: str
    label: int
    digest: str = ""  # sha1 of the file's bytes
    orientation: int = 1
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
        layout: ``"split"``, ``"train_test"`` or ``"flat"`` (layout.py).
        folds: With ``dataset.folds``: every train + validation image's fold,
            by ``rel``; else empty.
        source_id: ``dataset_id()`` of the scan this was derived from (set by
            ``duplicates.drop``); empty for a scan itself.
    """

    path: Path
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    files: dict[str, list[Entry]]
    skipped: list[str]
    layout: str = layout.SPLIT
    folds: dict[str, int] = field(default_factory=dict)
    source_id: str = ""

    def rotated(self) -> list[str]:
        """Paths (relative to the dataset) of the kept images an EXIF tag turns upright."""
        return [e.rel for s in SPLITS for e in self.files[s] if e.orientation != 1]

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

    def dataset_id(self) -> str:
        """16 hex digits over every kept image's path, label and content digest, whichever
        split it is in: the data set a run learnt from, the same for every fold and split seed.

        ``fingerprint()`` differs per fold (it hashes the assignment too); the report keeps
        runs of different data sets apart with this one (tag ``dataset_id``), so two
        folders are never averaged as replicates of one configuration. After
        ``dataset.duplicates=drop`` it is the scan's: each fold (and split seed) drops other
        copies, yet its runs are replicates on one data set.
        """
        if self.source_id:
            return self.source_id
        rows = sorted(f"{e.rel}\0{e.label}\0{e.digest}" for s in SPLITS for e in self.files[s])
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]

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


def _class_files(folder: Path, root: Path, others: dict) -> tuple[list[str], list[str]]:
    """Every file below ``folder`` (hidden folders pruned), relative to ``root``, sorted,
    and the sub-folders left out as ``"<rel>/: <why>"``.

    Symlinked sub-folders are followed; each real folder (st_dev, st_ino) is
    walked once, so a link to an ancestor or a sibling loops no more. A link to
    one of ``others`` (identity -> what it is: the data set's root, a split
    folder, another class folder) is not followed: its images would be read a
    second time under this class's label. A dangling link is listed like a file
    (the scan skips it with its target).
    """
    out, left_out = [], []
    seen = {_identity(folder)}
    for here, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in _visible(dirs):
            key = _identity(Path(here) / d)
            if key in others and key not in seen:
                rel = (Path(here) / d).relative_to(root).as_posix()
                left_out.append(f"{rel}/: a link to {others[key]}, not read again under this class")
            elif key not in seen:
                keep.append(d)
            seen.add(key)
        dirs[:] = keep
        out += [(Path(here) / f).relative_to(root).as_posix() for f in files]
    return sorted(out), left_out


def _identity(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


_DEFAULT = object()


def scan(path, cache_dir=None, split: assign.SplitSpec | None = None, *, max_pixels=_DEFAULT,
         progress: bool = False, truncated_jpeg: str = "skip") -> DatasetInfo:
    """Checks the folder layout and every file in it, without TensorFlow.

    Args:
        path: The dataset folder (str or Path).
        cache_dir: Where scan verdicts (and data/store.py's image stores) go;
            default ``imagecheck.default_cache_dir(path)``.
        split: ``dataset.split``/``split_seed``/``folds``/``fold``
            (``assign.SplitSpec.from_config``); default: the folder's own
            split, ``DEFAULT_SPLIT`` where it has none, no folds.
        max_pixels: Images with more pixels are skipped as too large; default
            ``dataset.max_image_pixels``'s, None: no limit.
        progress: A progress bar (count, rate, ETA) when checking takes > 2 s.
        truncated_jpeg: ``dataset.truncated_jpeg``: ``skip`` (listed as ``truncated: no
            end-of-image marker``) or ``keep`` a JPEG that decodes without its end marker.

    Returns:
        The classes (sorted), kept images per split, skipped files.

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
    others = {_identity(path): "the data set's root"}
    others.update({_identity(path / g): f"the split folder {g}/" for g in lay.groups if g})
    others.update({_identity(path / g / c): f"the class folder {g + '/' if g else ''}{c}/"
                   for g in lay.groups for c in class_names})
    walked = {(g, c): _class_files(path / g / c, path, others) for g in lay.groups for c in class_names}
    per_class = {k: files for k, (files, _) in walked.items()}
    cache = Path(cache_dir) if cache_dir else imagecheck.default_cache_dir(path)
    if max_pixels is _DEFAULT:
        from transferlab.config.schema import DatasetConf

        max_pixels = DatasetConf.max_image_pixels
    try:
        every = [rel for rels in per_class.values() for rel in rels]
        found = imagecheck.check_files(path, every, cache, max_pixels, progress, truncated_jpeg)
    except OSError as e:  # a file vanished meanwhile, or the cache is not writable
        raise DataError(f"Scanning {path} failed: {e}. Rerun once the folder is stable; if "
                        f"{cache} cannot be written, set TRANSFERLAB_CACHE=<writable "
                        "folder>.") from e
    skipped = [f"{rel}: not in a class folder" for rel in stray]
    skipped += [line for _, left_out in walked.values() for line in left_out]
    kept_by: dict[tuple[str, str], list[Entry]] = {}
    for (group, name), rels in per_class.items():
        kept = []
        for rel in rels:
            v = found[rel]
            if v.kind == imagecheck.SKIP:
                skipped.append(f"{rel}: {v.detail}")
                continue
            kept.append(Entry(rel, str(path / rel), class_names.index(name), v.digest,
                              orientation=v.orientation, phash=v.phash, width=v.width,
                              height=v.height))
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
    return DatasetInfo(path=path, class_names=class_names, counts=counts, files=files,
                       skipped=skipped, layout=lay.kind, folds=folds)
