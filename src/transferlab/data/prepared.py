"""The data a job trains on: scan, then the duplicates policy; one entry for every caller.

``prepare(cfg)`` is what the runner (each job, the sweep's preflight, a single
run's start) and ``transferlab export`` call instead of ``scan``: the scan
assigns the splits (whatever the layout), then ``dataset.duplicates`` decides
what happens to copies across them (data/duplicates.py):

- ``warn`` (default): one WARNING line with the counts per split pair (once per
  process and data set); the run gets the tag ``duplicates`` and ``duplicates.csv``;
- ``drop``: validation and test copies of train images, and test copies of
  validation images, are removed before anything is loaded, so the data
  fingerprint (and with it the config hash) describes what was used;
- ``error``: ``DataError`` listing the first pairs and the fix, before a run exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transferlab.data import duplicates as dup
from transferlab.data.folder import DataError, DatasetInfo

MODES = ("warn", "drop", "error")
log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()  # (data fingerprint, mode): say it once per process


@dataclass
class Prepared:
    """``info``: the images to use (after any drop); ``duplicates``: what was found
    (``duplicates.dropped`` lists what ``drop`` removed); ``mode``: the policy applied."""

    info: DatasetInfo
    duplicates: dup.Duplicates
    mode: str


def prepare(cfg) -> Prepared:
    """Scans the job's data folder (``scan_job``: the job's split) and applies ``dataset.duplicates``.

    Args:
        cfg: a job config (``dataset.*``; a config without ``dataset.duplicates``,
            e.g. an older run's, means ``warn``).

    Raises:
        DataError: the scan's errors; ``error`` mode and copies across splits;
            ``drop`` mode leaving a class of validation or test without images.
    """
    from transferlab.data import scan_job

    mode = cfg.dataset.get("duplicates", "warn") or "warn"
    if mode not in MODES:
        raise DataError(f"dataset.duplicates={mode!r}: allowed {', '.join(MODES)}.")
    return apply(scan_job(cfg), mode)


def apply(info: DatasetInfo, mode: str) -> Prepared:
    """``prepare`` after the scan: finds the duplicates of ``info`` and applies ``mode``."""
    found = dup.find(info)
    cross = found.cross
    if mode == "error" and cross:
        # Each path with its split: in a folder split by transferlab, train/a.png may be in validation.
        shown = "; ".join(f"{p.path_a} [{p.split_a}] = {p.path_b} [{p.split_b}] ({p.kind}"
                          + ("" if p.same_label else ", different label") + ")" for p in cross[:5])
        raise DataError(
            f"dataset.duplicates=error: {len(cross)} image pair(s) in {info.path} repeat an image "
            f"across splits ({dup.Duplicates(cross, found.threshold).summary()}): "
            f"{shown}{' ...' if len(cross) > 5 else ''}. Test "
            "scores on copies of training images measure memory, not generalisation. Fix: delete "
            "or replace the copies, dataset.duplicates=drop to leave them out of validation/test, "
            "or dataset.duplicates=warn to train anyway.")
    key = (info.fingerprint(), mode)
    if mode == "drop" and cross:
        info = dup.drop(info, found)
        if key not in _WARNED:
            log.warning("%s: dataset.duplicates=drop: %d validation/test image(s) left out as copies "
                        "of images in an earlier split (%s)", info.path, len(found.dropped),
                        found.summary())
    elif found.pairs and key not in _WARNED:
        log.warning("%s: duplicates found (%s); scores on validation/test copies of train images "
                    "are inflated. The list: artifact duplicates.csv of the run. Fix: "
                    "dataset.duplicates=drop or error", info.path, found.summary())
    _WARNED.add(key)
    return Prepared(info, found, mode)
