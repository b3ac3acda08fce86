"""The split a job trained on, logged with its run: ``split.csv`` and tags.

``split.csv`` lists every image the job used, one row each: ``path`` (relative
to the dataset root), ``class``, ``split`` (train, validation, test) and, with
``dataset.folds``, ``fold`` (the fold of each train + validation image; test
images have none). Tags: ``split_layout`` (split, train_test, flat),
``split_counts`` (images per split) and, with k-fold, ``fold`` ("k/K").
"""

from __future__ import annotations

import csv
import io

from transferlab.data import SPLITS, DatasetInfo

ARTIFACT = "split.csv"


def split_csv(info: DatasetInfo) -> str:
    """The rows of ``split.csv`` as CSV text (header ``path,class,split[,fold]``)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    folds = bool(info.folds)
    w.writerow(["path", "class", "split"] + (["fold"] if folds else []))
    for split in SPLITS:
        for e in info.files[split]:
            row = [e.rel, info.class_names[e.label], split]
            w.writerow(row + ([info.folds.get(e.rel, "")] if folds else []))
    return out.getvalue()


def log_split(c, run_id: str, info: DatasetInfo, cfg=None) -> None:
    """Logs ``split.csv`` and the split tags on the run."""
    counts = {s: len(info.files[s]) for s in SPLITS}
    c.set_tag(run_id, "split_layout", info.layout)
    c.set_tag(run_id, "split_counts", " ".join(f"{s}={n}" for s, n in counts.items()))
    if cfg is not None and cfg.dataset.get("folds"):
        c.set_tag(run_id, "fold", f"{cfg.dataset.fold}/{cfg.dataset.folds}")
    c.log_text(run_id, split_csv(info), ARTIFACT)
