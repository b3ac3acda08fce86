"""Which cached feature row is which image: content keys, and the splits as features.

The feature cache (featcache.py) stores each distinct image's features once,
under a 64-bit fingerprint of its pixels (the same picture in two splits, or
twice in one, is one row). ``as_features`` turns the data pipelines into
pipelines of features in exactly their batches and order: a ``data.load``
pipeline carries its own shuffled batches of file-order indices
(``index_batches``), which are mapped to feature rows, so no image is read or
hashed during training (at 224 px that was ~600 KB read and hashed per image
and epoch). Any other pipeline is mapped image by image through a fingerprint
lookup; an image missing from the cache is an error, never a silent mismatch.
"""

from __future__ import annotations

import numpy as np

_KEYS = []  # the one traced key function of this process


def source(ds):
    """A pipeline's images in a fixed order, read without moving its shuffle state.

    Returns the dataset below the shuffle (unbatched, in file order), the
    pipeline itself when it does not shuffle, or None when neither works
    (an infinite unshuffled pipeline).
    """
    import tensorflow as tf

    if getattr(ds, "file_order", None) is not None:  # data.load's train: shuffles indices
        return ds.file_order
    d = ds
    while d is not None:
        if type(d).__name__ in ("_ShuffleDataset", "ShuffleDataset"):
            src = d._input_dataset  # noqa: SLF001 (tf.data keeps no public handle)
            break
        d = getattr(d, "_input_dataset", None)
    else:
        src = ds
    if src.cardinality() == tf.data.INFINITE_CARDINALITY:
        return None
    return src


def keys_fn():
    """The per-image content key function, built once per process.

    TensorFlow counts traces per Python code object, not per function object:
    a new ``tf.function`` per job traced on each job's first call, and from the
    fifth job in a worker on, every job printed TensorFlow's "triggered
    tf.function retracing" warning. One function for the process traces once
    per image shape (``reduce_retracing`` then relaxes the batch size).
    """
    if _KEYS:
        return _KEYS[0]
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def keys(x):
        raw = tf.reshape(tf.bitcast(x, tf.uint8), [tf.shape(x)[0], -1])
        return tf.bitcast(tf.fingerprint(raw), tf.int64)  # farmhash64 of each image's bytes

    _KEYS.append(keys)
    return keys


def image_keys(sources, keys) -> np.ndarray:
    """int64 keys, shape (images,), of every image of ``sources`` in order."""
    out = [keys(batch[0]).numpy() for src in sources
           for batch in (src.batch(64) if src.element_spec[0].shape.rank == 3 else src)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _length(ds) -> int:
    """Images per pass of a ``data.load`` pipeline; -1 for another pipeline."""
    labels = getattr(ds, "labels", None)
    return len(labels) if labels is not None else -1


def as_features(splits, feats: np.ndarray, uniq: np.ndarray, keys: np.ndarray, keys_fn):
    """train, validation and test of ``splits`` as ``(features, labels)`` pipelines.

    Args:
        splits: ``data.Splits``.
        feats: float32 features, shape (distinct images, *feature shape).
        uniq: int64 keys of ``feats``' rows, sorted, shape (distinct images,).
        keys: the keys of train (file order), validation and test, concatenated
            (``image_keys`` of the three), shape (images,).
        keys_fn: ``keys_fn()``, for pipelines without index batches.
    """
    import tensorflow as tf

    features = tf.constant(feats)
    row_of = {int(k): r for r, k in enumerate(uniq)}
    parts = (splits.train, splits.validation, splits.test)
    ends = np.cumsum([0, *(_length(ds) for ds in parts)])
    indexed = ends[-1] == len(keys) and all(getattr(ds, "index_batches", None) is not None for ds in parts)
    table = None if indexed else tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(uniq), tf.range(len(uniq), dtype=tf.int64)), -1)

    def by_key(x, *rest):
        idx = table.lookup(keys_fn(x))
        check = tf.debugging.assert_non_negative(idx, message="an image is missing from the feature cache")
        with tf.control_dependencies([check]):
            return (tf.gather(features, idx), *rest)

    out = []
    for k, ds in enumerate(parts):
        if indexed:  # the pipeline's own index batches (its shuffle object: the same orders)
            rows = tf.constant(np.array([row_of[int(x)] for x in keys[ends[k]:ends[k + 1]]], np.int64))
            labels = tf.constant(ds.labels)
            ds = ds.index_batches.map(lambda i, rows=rows, labels=labels: (
                tf.gather(features, tf.gather(rows, i)), tf.gather(labels, i)),
                num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = ds.map(by_key, num_parallel_calls=tf.data.AUTOTUNE)
        out.append(ds.prefetch(tf.data.AUTOTUNE))
    return tuple(out)
