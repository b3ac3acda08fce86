"""Which kept image goes to which split (and fold): stratified, from a seed alone.

Within each class, images are ordered by ``sha256(split_seed, relative path)``
and cut into consecutive blocks: ``[train | validation | test]`` with exact
per-class counts (``round(n * fraction)``, at least one image per split with a
non-zero fraction). Because the key is the file's own path, adding (or
removing) an image moves at most one other image of its class across each
block boundary; a dataset that grows keeps the split it had. The same seed and
files give the same split on every machine and in every job of a sweep
(``seed`` is not involved: sweeping it keeps the split).

k-fold: the pool ``train + validation`` of each class, in the same order, is
cut into ``folds`` consecutive blocks whose sizes differ by at most one; block
``fold`` is validation, the others train. The test split stays as it is, so a
k-fold sweep and a plain one score the same test images.

Pure Python: no TensorFlow, no image reading.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Sequence

from transferlab.data.layout import FLAT, SPLIT, SPLITS, TRAIN_TEST, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSpec:
    """How to split: ``dataset.split`` / ``split_seed`` / ``folds`` / ``fold``.

    Attributes:
        fractions: (train, validation, test) summing to 1, or None: a
            ``SPLIT`` folder is used as it is, the others get ``DEFAULT_SPLIT``.
        seed: Orders the images of each class (``dataset.split_seed``).
        folds: k of k-fold (>= 2), or None.
        fold: The fold used as validation (0..folds-1); None with ``folds`` set
            only describes the folds (every pool image's fold is still computed).
    """

    fractions: tuple[float, float, float] | None = None
    seed: int = 0
    folds: int | None = None
    fold: int | None = None

    @classmethod
    def from_config(cls, d) -> "SplitSpec":
        """From a composed ``dataset`` config node (keys missing in old configs: defaults)."""
        get = d.get if hasattr(d, "get") else (lambda k, v=None: getattr(d, k, v))
        split = get("split", None)
        return cls(tuple(float(x) for x in split) if split is not None else None,
                   int(get("split_seed", 0) or 0), get("folds", None), get("fold", None))


def default_split() -> tuple[float, float, float]:
    from transferlab.config.schema import DEFAULT_SPLIT

    return tuple(DEFAULT_SPLIT)


def order(rels: Sequence[str], seed: int) -> list[str]:
    """``rels`` sorted by the hash of ``(seed, rel)``: a fixed shuffle keyed on each path."""
    return sorted(rels, key=lambda r: hashlib.sha256(f"{seed}\0{r}".encode()).digest())


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, not Python's half to even


def counts(n: int, fractions: Sequence[float], what: str) -> list[int]:
    """Images per split for ``n`` images of one class: exact shares, each >= 1 where > 0.

    Raises:
        DataError: fewer images than splits with a non-zero fraction (names ``what``).
    """
    need = sum(1 for f in fractions if f > 0)
    if n < need:
        names = [s for s, f in zip(SPLITS, fractions) if f > 0]
        raise DataError(f"{what} has {n} usable image{'s' if n != 1 else ''}; splitting it into "
                        f"{'/'.join(names)} needs at least {need} (every class in every split). "
                        "Add images to it, or remove the class folder.")
    out = [0] * len(fractions)
    for i in range(1, len(fractions)):  # train (index 0) takes the rest
        if fractions[i] > 0:
            out[i] = max(1, _round(n * fractions[i]))
    while sum(out[1:]) > n - 1:  # rounding up small classes: train keeps at least one
        j = max(range(1, len(out)), key=lambda i: out[i])
        out[j] -= 1
    out[0] = n - sum(out[1:])
    return out


def fold_sizes(m: int, folds: int, what: str) -> list[int]:
    """Sizes of ``folds`` consecutive blocks of ``m`` images (differing by at most one).

    Raises:
        DataError: ``m < folds`` (a fold would miss the class).
    """
    if m < folds:
        raise DataError(f"{what} has {m} image{'s' if m != 1 else ''} in train + validation; "
                        f"dataset.folds={folds} needs at least {folds} (one per fold, so every "
                        "fold's validation holds every class). Use fewer folds or add images.")
    return [m // folds + (1 if i < m % folds else 0) for i in range(folds)]


def assign(kind: str, kept: dict[tuple[str, str], list], class_names: list[str],
           spec: SplitSpec, rel=lambda e: e.rel) -> tuple[dict[str, list], dict[str, int]]:
    """Distributes kept images to the splits.

    Args:
        kind: The layout (layout.SPLIT, TRAIN_TEST or FLAT).
        kept: ``(group folder, class) -> items`` in path order; the group is
            the split folder, ``""`` for FLAT.
        class_names: The classes, label order.
        spec: The split to make.
        rel: An item's path relative to the dataset root (the order key).

    Returns:
        ``(files, fold_of)``: items per split (sorted by path, classes in label
        order) and, with ``spec.folds``, every pool image's fold by its path.

    Raises:
        DataError: ``dataset.split`` given for a folder that is already split
            into all three; a class too small for the split or the folds.
    """
    fr = spec.fractions
    if kind == SPLIT and fr is not None:
        raise DataError(f"dataset.split={list(fr)}: this folder already holds train/, "
                        "validation/ and test/, which are used as they are. Fix: remove "
                        "dataset.split (or dataset.split=null); to have a folder split, put its "
                        "class folders at the top level (<dataset>/<class>/<images>).")
    if kind == TRAIN_TEST and fr is not None:
        log.info("test/ is given: of dataset.split=%s only the train:validation ratio is used "
                 "(validation carved from train/)", list(fr))
    fr = fr or default_split()
    files: dict[str, list] = {s: [] for s in SPLITS}
    fold_of: dict[str, int] = {}
    for name in class_names:
        by = {}
        if kind == SPLIT:
            by = {s: list(kept[(s, name)]) for s in SPLITS}
        elif kind == TRAIN_TEST:
            items = kept[("train", name)]
            share = fr[1] / (fr[0] + fr[1])
            if spec.folds:
                by = {"train": list(items), "validation": [], "test": list(kept[("test", name)])}
            else:
                by = _cut(items, (1 - share, share), spec.seed, f"Class folder train/{name}", rel)
                by["test"] = list(kept[("test", name)])
        elif kind == FLAT:
            if fr[2] <= 0:
                raise DataError(f"dataset.split={list(fr)} leaves no test split for this folder "
                                "of class folders. Fix: a test share > 0, e.g. "
                                "dataset.split=[0.8,0.1,0.1].")
            by = _cut(kept[("", name)], fr, spec.seed, f"Class folder {name}", rel)
        if spec.folds:
            by = _folds(by, spec, f"Class {name!r}", rel, fold_of)
        for s in SPLITS:
            files[s] += sorted(by[s], key=rel)
    return files, fold_of


def _cut(items: list, fractions: Sequence[float], seed: int, what: str, rel) -> dict[str, list]:
    """Consecutive blocks of ``items`` in hash order, sized by ``counts``."""
    by_rel = {rel(i): i for i in items}
    ordered = [by_rel[r] for r in order(list(by_rel), seed)]
    sizes = counts(len(ordered), fractions, what)
    out, start = {}, 0
    for s, size in zip(SPLITS, sizes):
        out[s] = ordered[start:start + size]
        start += size
    for s in SPLITS[len(sizes):]:
        out[s] = []
    return out


def _folds(by: dict[str, list], spec: SplitSpec, what: str, rel, fold_of: dict) -> dict[str, list]:
    pool = by["train"] + by["validation"]
    by_rel = {rel(i): i for i in pool}
    ordered = [by_rel[r] for r in order(list(by_rel), spec.seed)]
    train, val, start = [], [], 0
    for k, size in enumerate(fold_sizes(len(ordered), spec.folds, what)):
        block = ordered[start:start + size]
        start += size
        fold_of.update({rel(i): k for i in block})
        (val if k == spec.fold else train).extend(block)
    return {"train": train, "validation": val, "test": by["test"]}
