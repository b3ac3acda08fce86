"""The three folder layouts ``scan`` accepts, and what it says about anything else.

(a) ``split``: ``<path>/{train,validation,test}/<class>/<images>``, used as it is;
(b) ``train_test``: ``<path>/{train,test}/<class>/<images>``, validation carved
    from train (data/assign.py);
(c) ``flat``: ``<path>/<class>/<images>``, split by class into all three.

Pure Python (no TensorFlow, no image reading): only folder names are looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
SPLIT = "split"
TRAIN_TEST = "train_test"
FLAT = "flat"
ACCEPTED = ("accepted layouts: <dataset>/{train,validation,test}/<class>/<images> (used as it "
            "is), <dataset>/{train,test}/<class>/<images> (validation carved from train), or "
            "<dataset>/<class>/<images> (split by dataset.split)")


class DataError(ValueError):
    """A user-facing dataset error; its message names the folder and the fix."""


@dataclass(frozen=True)
class Layout:
    """What the top of a dataset folder is.

    Attributes:
        kind: ``SPLIT``, ``TRAIN_TEST`` or ``FLAT``.
        groups: The folders holding class folders, relative to the dataset root:
            the split folders, or ``""`` (the root itself) for ``FLAT``.
        class_names: Sorted class folder names (every group has the same).
        stray: Files directly in a group folder, not in a class folder (relative paths).
    """

    kind: str
    groups: tuple[str, ...]
    class_names: list[str]
    stray: list[str]


def visible(names) -> list[str]:
    """Names not starting with a dot, sorted (hidden files and folders are never data)."""
    return sorted(n for n in names if not n.startswith("."))


def _found(dirs: list[str], files: list[str]) -> str:
    shown = ", ".join(dirs[:8]) + (f" and {len(dirs) - 8} more" if len(dirs) > 8 else "")
    what = [f"folder{'s' if len(dirs) != 1 else ''} {shown}" if dirs else "no folders",
            f"{len(files)} file{'s' if len(files) != 1 else ''}"]
    return " and ".join(what)


def _children(folder: Path) -> tuple[list[str], list[str]]:
    """Visible sub-folders and files of ``folder`` (a symlink counts as what it points to)."""
    entries = list(folder.iterdir())
    dirs = visible(p.name for p in entries if p.is_dir())
    files = visible(p.name for p in entries if not p.is_dir())
    return dirs, files


def detect(path: Path) -> Layout:
    """Which of the three layouts ``path`` has, with its class names.

    Raises:
        DataError: ``path`` is missing; it holds some split folders but not
            train/ and test/; no class folders (the message says what was found,
            e.g. "found no folders and 12 files", and the layouts accepted); fewer
            than 2 classes; class folders that differ between split folders.
    """
    if not path.is_dir():
        raise DataError(f"Dataset folder {path} does not exist or is not a folder; {ACCEPTED}.")
    dirs, files = _children(path)
    present = [s for s in SPLITS if s in dirs]
    if present:
        if "train" not in present or "test" not in present:
            raise DataError(
                f"{path}: found {_found(dirs, files)}: split folder(s) {', '.join(present)} but "
                f"no {' and no '.join(s + '/' for s in ('train', 'test') if s not in present)}. "
                f"{ACCEPTED[0].upper() + ACCEPTED[1:]}. Add the missing split folder, or move "
                "every class folder to the top level to have it split.")
        kind = SPLIT if "validation" in present else TRAIN_TEST
        return _split_layout(path, kind, tuple(present))
    if not dirs:
        raise DataError(f"{path}: found {_found(dirs, files)}, no class folders; {ACCEPTED}. "
                        f"Put each class's images in its own folder, e.g. {path / '<class name>'}"
                        "/*.jpg.")
    if len(dirs) < 2:
        raise DataError(f"{path}: found {_found(dirs, files)}: only the class folder {dirs}; "
                        f"classification needs at least 2 class folders ({ACCEPTED}).")
    return Layout(FLAT, ("",), dirs, files)


def _split_layout(path: Path, kind: str, groups: tuple[str, ...]) -> Layout:
    class_names: list[str] = []
    stray: list[str] = []
    for split in groups:
        split_dir = path / split
        classes, files = _children(split_dir)
        stray += [f"{split}/{f}" for f in files]
        if not classes:
            raise DataError(f"{split_dir} has no class sub-folders (found {_found(classes, files)}); "
                            f"put each class's images in its own folder, e.g. "
                            f"{split_dir / '<class name>'}/*.jpg.")
        if split == groups[0]:
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
    return Layout(kind, groups, class_names, stray)


def split_relative(kind: str, rel: str) -> str:
    """``rel`` (relative to the dataset root) relative to its split folder: ``<class>/<file>``.

    For ``FLAT`` datasets ``rel`` already is; otherwise the split folder is dropped.
    """
    return rel if kind == FLAT else rel.split("/", 1)[1]
