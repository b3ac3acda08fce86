"""Exact and near duplicates across (and within) the train / validation / test splits.

A test image that is a copy of a train image measures memory, not generalisation;
public data sets have shipped such leaks. ``find`` compares every kept image of a
scanned ``DatasetInfo`` (whatever layout assigned its splits) by two keys the scan
already computed (imagecheck.py):

- **exact**: the same sha1 of the file's bytes (``Entry.digest``);
- **near**: a 64-bit DCT perceptual hash (``Entry.phash``, ``imagehash.phash``) at a
  Hamming distance of at most ``NEAR_THRESHOLD`` bits, confirmed by the pixels
  (``similar``): 16x16 RGB thumbnails of the two images correlate at
  ``MIN_CORRELATION`` or more (Pearson, so brightness and contrast changes pass), or
  their 4x4 block means differ by ``MAX_COARSE_DIFF`` levels at most (textures and
  noise, whose fine detail re-encoding replaces). Re-encoded, resized or slightly
  edited copies; flips, rotations and large crops are not caught.

Why both (benchmarks/duplicates_threshold.py, 2026-11-30, 60 images per set):
copies re-encoded at JPEG quality 50-90, resized to 50%/200% (and re-encoded),
saved as PNG or brightened by 8% lie at phash distance 0-6 (medians 0-2; up to
10 for re-encoded 40-px noise), distinct images at 10 or more (synthetic shapes
at 64 and 224 px, noise images, 500x375 smooth scenes; medians 32). But the hash
sees only the coarse grey-level layout: among 2,000 synthetic 64-px shapes (a
flat background and one shape) 440 distinct pairs lie within 6 bits (186 within
4), e.g. two squares of other colours at nearly the same place. Their thumbnails
correlate at 0.95 at most (median 0.65) and their 4x4 means differ by 6.6 levels or
more; the copies of shapes and scenes correlate at 0.97 or more, those of the noise
images (correlation as low as 0.3: re-encoding replaces the noise) differ by 3.5
levels at most in their 4x4 means. The pixel check removes all 440 and keeps
every copy found by the hash, except the noise images brightened by 8% and
re-encoded (neither test passes: missed). A 4% crop moves the hash by 2-20:
caught sometimes (0-59% of the sets' copies).

Scale: no pairwise loop in Python. Exact keys are grouped by sorting; near pairs
use the pigeonhole principle: split the 64 bits into ``threshold + 1`` blocks, two
hashes within ``threshold`` bits agree exactly on at least one block, so only
pairs sharing a block value are compared (numpy, vectorised). Random hashes on
the 2-core build machine: 25,000 in 0.13 s, 100,000 in 2.8 s (~68 M candidate
pairs; `python benchmarks/duplicates_threshold.py` prints both; the test suite
times 25,000).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from transferlab.data.folder import SPLITS, DatasetInfo
from transferlab.data.thumbs import MAX_COARSE_DIFF, MIN_CORRELATION, confirm, similar, thumbnail  # noqa: F401

NEAR_THRESHOLD = 6  # bits of 64; see the module docstring for the measurement
EXACT, NEAR = "exact", "near"
CSV_COLUMNS = ("split_a", "path_a", "split_b", "path_b", "kind", "distance", "same_label")


@dataclass(frozen=True)
class Pair:
    """Two kept images that are copies: ``split_a`` comes first in train, validation, test.

    ``path_a``/``path_b`` are relative to the dataset root; ``distance`` is the
    phash Hamming distance in bits (0..64; exact pairs: their phash distance, 0).
    """

    split_a: str
    path_a: str
    split_b: str
    path_b: str
    kind: str  # EXACT or NEAR
    distance: int
    same_label: bool

    @property
    def cross(self) -> bool:
        """Across two splits (leakage), not within one."""
        return self.split_a != self.split_b


@dataclass
class Duplicates:
    """What ``find`` found, and how to say it.

    Attributes:
        pairs: every duplicate pair, cross-split pairs first (train/validation,
            train/test, validation/test), then within a split; exact before near.
        threshold: the near-duplicate threshold used (bits).
        dropped: after ``drop``: the paths (relative to the dataset root) of the images removed.
    """

    pairs: list[Pair]
    threshold: int = NEAR_THRESHOLD
    dropped: list[str] = field(default_factory=list)

    @property
    def cross(self) -> list[Pair]:
        return [p for p in self.pairs if p.cross]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"train/test": {"exact": n, "near": n, "different_label": n}, ...}``
        per split pair that has any (``"train/train"``: within train)."""
        out: dict[str, dict[str, int]] = {}
        for p in self.pairs:
            c = out.setdefault(f"{p.split_a}/{p.split_b}", {EXACT: 0, NEAR: 0, "different_label": 0})
            c[p.kind] += 1
            c["different_label"] += not p.same_label
        return out

    def summary(self) -> str:
        """One line: counts per split pair, across splits first; ``"none"`` if none."""
        if not self.pairs:
            return "none"
        parts = []
        for key, c in self.counts().items():
            a, b = key.split("/")
            where = f"{a}/{b}" if a != b else f"within {a}"
            parts.append(f"{where}: {c[EXACT]} exact + {c[NEAR]} near"
                         + (f" ({c['different_label']} with a different label)" if c["different_label"] else ""))
        return "; ".join(parts)

    def csv(self) -> str:
        """``duplicates.csv``: one row per pair, columns ``CSV_COLUMNS``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for p in self.pairs:
            w.writerow([p.split_a, p.path_a, p.split_b, p.path_b, p.kind, p.distance, int(p.same_label)])
        return buf.getvalue()


def equal_key_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i != j`` unordered, of equal entries of a 1-D array.

    Sorts once, then enumerates the pairs inside each run of equal keys without
    a Python loop: O(n log n + number of pairs).
    """
    n = len(keys)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(keys, kind="stable")
    s = keys[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], n]  # each position's group runs to the end of its run
    end = np.repeat(ends, ends - starts)
    later = end - np.arange(n) - 1  # partners after each sorted position, in its group
    total = int(later.sum())
    if not total:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    first = np.repeat(np.arange(n), later)
    step = np.arange(total) - np.repeat(np.cumsum(later) - later, later) + 1
    return order[first].astype(np.int64), order[first + step].astype(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of two uint64 arrays (element-wise)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def near_pairs(hashes: np.ndarray, threshold: int = NEAR_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of 64-bit hashes within ``threshold`` bits: ``(i, j, distance)``, each pair once.

    Multi-index search: ``threshold + 1`` blocks of the 64 bits; a pair within
    ``threshold`` bits agrees on at least one block (pigeonhole), so candidates are
    pairs equal on a block (``equal_key_pairs``), kept in the first block they agree
    on (no pair twice) and verified with their full distance.

    Args:
        hashes: uint64 array of shape (n,).
        threshold: 0..63 bits.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    bounds = np.linspace(0, 64, threshold + 2).astype(np.uint64)
    blocks = [(hashes >> lo) & np.uint64((1 << int(hi - lo)) - 1) for lo, hi in zip(bounds[:-1], bounds[1:])]
    out_i, out_j, out_d = [], [], []
    for k, key in enumerate(blocks):
        i, j = equal_key_pairs(key)
        if not len(i):
            continue
        d = hamming(hashes[i], hashes[j])
        near = d <= threshold
        i, j, d = i[near], j[near], d[near]
        first = np.ones(len(i), bool)  # not already found through an earlier block
        for earlier in blocks[:k]:
            first &= earlier[i] != earlier[j]
        out_i.append(i[first]), out_j.append(j[first]), out_d.append(d[first])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def find(info: DatasetInfo, threshold: int = NEAR_THRESHOLD, cache_dir=None) -> Duplicates:
    """Exact and near duplicate pairs among ``info``'s kept images.

    Byte-identical files form one group, anchored at its first image (train before
    validation before test, then by path): each other member is listed once, paired
    with the anchor (``exact``), so a group of g copies gives g - 1 pairs, not
    g(g-1)/2. The near search runs on the anchors only; a near pair of two groups is
    listed as each group's anchor against every member of the other, so every image
    that has an earlier copy appears as ``path_b`` of a pair.

    Args:
        info: a scanned dataset, its splits already assigned.
        threshold: near-duplicate threshold in bits (phash Hamming distance).
        cache_dir: where ``thumbs.confirm`` keeps its verdicts; default the data
            set's cache folder (``imagecheck.default_cache_dir``), ``""``: none.

    Returns:
        A ``Duplicates``. Images without a perceptual hash (``phash == ""``) take
        part in the exact check only. Near candidates are re-read (thumbnails) to
        confirm them, once per data set (the verdicts are cached).
    """
    rank = {s: k for k, s in enumerate(SPLITS)}
    entries = sorted(((split, e) for split in SPLITS for e in info.files[split]),
                     key=lambda x: (rank[x[0]], x[1].rel))
    n = len(entries)
    if n < 2:
        return Duplicates([], threshold)
    digests = np.array([e.digest or f"\0{k}" for k, (_, e) in enumerate(entries)])
    phash = np.array([int(e.phash, 16) if e.phash else 0 for _, e in entries], dtype=np.uint64)
    has = np.array([bool(e.phash) for _, e in entries])
    _, group = np.unique(digests, return_inverse=True)
    anchor_of = np.full(group.max() + 1, n)
    np.minimum.at(anchor_of, group, np.arange(n))  # entries are sorted: the earliest member
    anchor = anchor_of[group]
    copies = np.flatnonzero(anchor != np.arange(n))
    rows = [(int(anchor[k]), int(k), EXACT, 0) for k in copies]
    reps = np.flatnonzero((anchor == np.arange(n)) & has)
    ni, nj, nd = near_pairs(phash[reps], threshold)
    ni, nj = reps[ni], reps[nj]
    if cache_dir is None:
        from transferlab.data.imagecheck import default_cache_dir

        cache_dir = default_cache_dir(info.path)
    side = lambda i: (entries[i][1].source, entries[i][1].digest)  # noqa: E731
    confirmed = confirm([(side(i), side(j)) for i, j in zip(ni, nj)], cache_dir or None)
    members: dict[int, list[int]] = {}
    if confirmed.any():
        for k in copies:
            members.setdefault(int(anchor[k]), []).append(int(k))
    for i, j, d in zip(ni[confirmed], nj[confirmed], nd[confirmed]):
        i, j = int(i), int(j)
        rows += [(i, m, NEAR, int(d)) for m in (j, *members.get(j, ()))]
        rows += [(j, m, NEAR, int(d)) for m in members.get(i, ())]
    pairs = []
    for i, j, kind, d in rows:
        (sa, a), (sb, b) = sorted((entries[i], entries[j]), key=lambda x: (rank[x[0]], x[1].rel))
        pairs.append(Pair(sa, a.rel, sb, b.rel, kind, d, a.label == b.label))
    pairs.sort(key=lambda p: (not p.cross, rank[p.split_a], rank[p.split_b], p.kind != EXACT,
                              p.distance, p.path_a, p.path_b))
    return Duplicates(pairs, threshold)


def drop(info: DatasetInfo, dups: Duplicates) -> DatasetInfo:
    """``info`` without the later copy of every cross-split pair.

    Removed: validation and test images that copy a train image, and test images
    that copy a validation image (exact or near); train is never changed, and
    duplicates within one split stay. ``dups.dropped`` lists what went. The
    result's ``fingerprint()`` and counts describe what is used; its ``dataset_id()`` stays
    the scan's, so the folds and split seeds of one folder, which drop different copies,
    remain replicates on one data set.

    Raises:
        DataError: a class of validation or test would be left without an image.
    """
    from dataclasses import replace

    from transferlab.data.folder import DataError

    gone = {(p.split_b, p.path_b) for p in dups.cross}
    dups.dropped = [r for _, r in sorted(gone, key=lambda x: (SPLITS.index(x[0]), x[1]))]
    files = {s: [e for e in info.files[s] if (s, e.rel) not in gone] for s in SPLITS}
    counts = {s: {c: sum(e.label == k for e in files[s]) for k, c in enumerate(info.class_names)}
              for s in SPLITS}
    empty = [f"{s}/{c}" for s in SPLITS for c, n in counts[s].items() if n == 0]
    if empty:
        raise DataError(
            f"dataset.duplicates=drop removed every image of {', '.join(empty)} in {info.path} "
            f"({len(gone)} copies of images in an earlier split dropped: "
            f"{'; '.join(dups.dropped[:5])}{' ...' if len(gone) > 5 else ''}). Fix: put distinct "
            "images there, or dataset.duplicates=warn to train on the data as it is.")
    return replace(info, files=files, counts=counts, source_id=info.dataset_id())
