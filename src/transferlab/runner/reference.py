"""Reference scores on a job's own split: the majority class and a linear model on pixels.

A transfer-learning result means something only next to what needs no deep
network: always answering the most frequent training class, and a
scikit-learn ``LogisticRegression`` on the images downsampled to
``PIXELS`` x ``PIXELS`` (standardised). Both are computed on exactly the
job's train/validation/test split and logged as ``ref_majority_*`` and
``ref_logreg_*`` metrics, which the report shows as reference rows. They
depend only on the data and the input size, so they are computed once per
(data fingerprint, image size) and kept as JSON under
``<mlruns>/reference/``; every later job on the same data reads them back.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

PIXELS = 8          # 8 x 8 x 3 = 192 features: enough for colour and layout, seconds to fit
MAX_ITER = 500
VERSION = 1         # bump when the recipe changes: old cache files are ignored


def _arrays(ds, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, PIXELS*PIXELS*3), labels (n,)) of a finite, unbatched-or-batched dataset."""
    import tensorflow as tf

    xs, ys = [], []
    for x, y in ds:
        x = tf.image.resize(x, (PIXELS, PIXELS), method="area")  # mean of each block of pixels
        xs.append(np.asarray(x, np.float32).reshape(len(x), -1))
        y = np.asarray(y)
        ys.append(y[:, 0].astype(int) if k == 2 else y.argmax(axis=1))
    return np.concatenate(xs), np.concatenate(ys)


def _split_arrays(splits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split's images and labels in file order (train read below its shuffle)."""
    from transferlab.engine.featkeys import source as _source

    k = splits.num_classes
    train = _source(splits.train)
    if train is None:
        raise ValueError("the train pipeline cannot be read without its shuffle")
    if train.element_spec[0].shape.rank == 3:  # below the shuffle: single images
        train = train.batch(256)
    return {"train": _arrays(train, k), "validation": _arrays(splits.validation, k),
            "test": _arrays(splits.test, k)}


def compute(splits) -> dict[str, float]:
    """``ref_majority_{val,test}_{acc,balanced_acc}`` and ``ref_logreg_{val,test}_*``.

    The majority class is the most frequent class of the TRAIN split (what a
    constant classifier would learn); its balanced accuracy is 1 / classes present.
    """
    from transferlab.runner.scores import test_metrics

    data = _split_arrays(splits)
    k = splits.num_classes
    x_tr, y_tr = data["train"]
    majority = int(np.bincount(y_tr, minlength=k).argmax())
    out: dict[str, float] = {}
    for split, short in (("validation", "val"), ("test", "test")):
        _, y = data[split]
        out[f"ref_majority_{short}_acc"] = float(np.mean(y == majority))
        out[f"ref_majority_{short}_balanced_acc"] = 1.0 / max(1, np.unique(y).size)
    if np.unique(y_tr).size < 2:
        return out
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
    with warnings.catch_warnings():  # ConvergenceWarning on tiny sets: the score still stands
        warnings.simplefilter("ignore")
        model.fit(x_tr, y_tr)
    for split, short in (("validation", "val"), ("test", "test")):
        x, y = data[split]
        probs = np.zeros((len(x), k))
        probs[:, model.classes_] = model.predict_proba(x)  # classes absent from train stay 0
        pred = probs.argmax(axis=1)
        scores = test_metrics(y, pred, probs)
        out[f"ref_logreg_{short}_acc"] = float(np.mean(pred == y))
        for name, value in scores.items():
            out[f"ref_logreg_{short}_{name[len('test_'):]}"] = value
    return out


def cached(splits, cache_dir: Path, fingerprint: str, image_size: int) -> dict[str, float]:
    """``compute`` once per (data fingerprint, image size); later jobs read the JSON.

    Never fails a job: a cache that cannot be written is only skipped.
    """
    path = Path(cache_dir) / f"{fingerprint[:32]}_{image_size}px_v{VERSION}.json"
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        pass
    out = compute(splits)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out, sort_keys=True))
        os.replace(tmp, path)  # parallel jobs: whole files only
    except OSError:
        pass
    return out


def for_job(cfg, splits, hist: dict, test_loss: float, c, run_id: str) -> dict[str, float]:
    """The job's reference metrics, and its ``flags`` tag (report/flags.py) when it has any.

    ``hist``: per-epoch values by Keras name (``artifacts.history``). A failure
    here is reported as tag ``reference`` and never fails the job.
    """
    from transferlab.models.registry import input_size
    from transferlab.report.flags import flags
    from transferlab.runner import tracking

    try:
        fp = c.get_run(run_id).data.tags.get("data_fingerprint", "")
        ref = cached(splits, tracking.default_store_dir(cfg) / "reference", fp, input_size(cfg)) \
            if fp else compute(splits)
    except Exception as e:  # a reference row is a nicety; the job's own numbers are not
        c.set_tag(run_id, "reference", f"not computed: {type(e).__name__}: {e}"[:500])
        ref = {}
    found = flags(hist.get("loss", []), hist.get("val_loss", []), hist.get("val_accuracy", []),
                  ref.get("ref_majority_val_acc"), test_loss,
                  hist.get("val_balanced_accuracy", []), ref.get("ref_majority_val_balanced_acc"))
    if found:
        c.set_tag(run_id, "flags", "; ".join(found))
        print(f"[transferlab] warning: {tracking.run_name(cfg)}: {'; '.join(found)}")
    return ref
