"""What a job trains on, in numbers: images per split x class, imbalance, image sizes, class weights.

Pure Python and numpy over a scanned ``DatasetInfo`` (the sizes come from the
scan's verdicts, so nothing is decoded again). The runner logs ``dataset_stats``
as the artifact ``dataset_stats.json`` and ``stats_tags`` as run tags; the
report's "Data" section reads them back (report/datasection.py).
"""

from __future__ import annotations

from transferlab.data.folder import SPLITS, DatasetInfo


def dataset_stats(info: DatasetInfo) -> dict:
    """The statistics of the images a job uses.

    Returns:
        A JSON-ready dict: ``fingerprint``; ``classes`` (label order);
        ``counts[split][class]`` and ``images[split]`` (numbers of images);
        ``imbalance_ratio``: largest / smallest class in train (1.0 = balanced);
        ``image_size``: ``min_width``, ``max_width``, ``min_height``,
        ``max_height`` in pixels as stored (before EXIF rotation; ``None`` when
        the scan recorded no size).
    """
    train = [info.counts["train"].get(c, 0) for c in info.class_names]
    sizes = [(e.width, e.height) for s in SPLITS for e in info.files[s] if e.width and e.height]
    size = {"min_width": None, "max_width": None, "min_height": None, "max_height": None}
    if sizes:
        w, h = zip(*sizes)
        size = {"min_width": min(w), "max_width": max(w), "min_height": min(h), "max_height": max(h)}
    return {
        "fingerprint": info.fingerprint(),
        "classes": list(info.class_names),
        "counts": {s: {c: int(info.counts[s].get(c, 0)) for c in info.class_names} for s in SPLITS},
        "images": {s: len(info.files[s]) for s in SPLITS},
        "imbalance_ratio": round(max(train) / min(train), 3) if train and min(train) > 0 else None,
        "image_size": size,
    }


def size_range(stats: dict) -> str:
    """``"40x40"`` when every image has one size, else ``"32-500 x 24-375"`` (width x height, px)."""
    s = stats["image_size"]
    if s["min_width"] is None:
        return "unknown"
    if (s["min_width"], s["min_height"]) == (s["max_width"], s["max_height"]):
        return f"{s['min_width']}x{s['min_height']}"
    return f"{s['min_width']}-{s['max_width']} x {s['min_height']}-{s['max_height']}"


def stats_tags(stats: dict) -> dict[str, str]:
    """Run tags: ``dataset_images`` ("train 24 · validation 8 · test 12"), ``dataset_classes``,
    ``imbalance_ratio`` (train, largest / smallest class) and ``image_size_range`` (px)."""
    ratio = stats["imbalance_ratio"]
    return {
        "dataset_images": " · ".join(f"{s} {stats['images'][s]}" for s in SPLITS),
        "dataset_classes": str(len(stats["classes"])),
        "imbalance_ratio": "n/a" if ratio is None else f"{ratio:.2f}",
        "image_size_range": size_range(stats),
    }


def class_weights(info: DatasetInfo) -> dict[int, float]:
    """Keras ``class_weight`` for ``trainer.class_weight=balanced``: label -> n / (k * n_c).

    ``n`` train images, ``k`` classes, ``n_c`` train images of class ``c``
    (``sklearn.utils.class_weight.compute_class_weight("balanced")``): every class
    then carries the same total weight in the loss, and the mean weight per image is 1.
    """
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([e.label for e in info.files["train"]])
    classes = np.arange(len(info.class_names))
    w = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(v) for c, v in zip(classes, w)}
