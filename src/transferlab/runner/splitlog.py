"""The split a job trained on, logged with its run: ``split.csv`` and tags.

``split.csv`` lists every image the job used, one row each: ``path`` (relative
to the dataset root), ``class``, ``split`` (train, validation, test) and, with
``dataset.folds``, ``fold`` (the fold of each train + validation image; test
images have none). Tags: ``split_layout`` (split, train_test, flat),
``split_counts`` (images per split) and, with k-fold, ``fold`` ("k/K").

With k-fold a run also logs ``val_predictions.csv`` (as test_predictions.csv,
paths relative to the dataset root): its fold's images predicted by the model
that did not train on them. Over the K runs of a configuration these are the
out-of-fold predictions of the whole pool, there to inspect: they chose the
configuration (its score is the folds' mean validation score), so the report's
verdicts are on the untouched test split instead (report/significance.py).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from transferlab.data import SPLITS, DatasetInfo

ARTIFACT = "split.csv"
VAL_PREDICTIONS = "val_predictions.csv"


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


def log_val_predictions(model, splits, info: DatasetInfo, c, run_id: str) -> None:
    """k-fold: logs ``val_predictions.csv``, the validation fold through the trained model.

    One ``predict`` over the validation split (in file order, the order of
    ``info.files["validation"]``); columns path,true,pred,correct,p_0..p_{k-1}.
    """
    import dataclasses

    from transferlab.engine.evaluate import test_scores
    from transferlab.runner.artifacts import write_predictions

    s = test_scores(model, dataclasses.replace(splits, test=splits.validation))
    paths = [e.rel for e in info.files["validation"]]
    if len(paths) != len(s.true):
        raise RuntimeError(f"{len(s.true)} validation predictions for {len(paths)} images")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / VAL_PREDICTIONS
        write_predictions(out, paths, s.true, s.pred, s.probs)
        c.log_artifact(run_id, str(out))
