"""``scan``'s kept images -> batched ``tf.data`` pipelines, served from the compact store.

Every split is a list of positions into one ``store.ImageStore`` (each
distinct image once, whatever split or fold it is in). A pipeline is

    Dataset.range(n) [.shuffle(n, seed, reshuffle_each_iteration=True) [.repeat()]]
        .batch(batch_size).map(read positions -> uint8 -> float32)

so shuffling moves 8-byte indices, not images, and the RAM and disk stores
feed the same graph but for the read (``tf.gather`` on the RAM store's
variable, ``os.pread`` through ``tf.numpy_function`` on the file): the same
bytes, bit-identical batches. TensorFlow is imported
inside ``load`` only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from transferlab.data import imagecheck, store
from transferlab.data.folder import SPLITS, DatasetInfo, Splits

log = logging.getLogger(__name__)


def _pipeline(images: store.ImageStore, positions: np.ndarray, y: np.ndarray, batch_size: int,
              seed: int | None = None, repeat: bool = False):
    """Batches of ``(float32 images (b, S, S, 3) in 0..255, labels)``; shuffled if ``seed``."""
    import tensorflow as tf

    n, s = len(positions), images.size
    pos_t, y_t = tf.constant(positions, tf.int64), tf.constant(y)

    def read(i):
        if images.variable is not None:  # in RAM: no Python call per batch
            x = tf.gather(images.variable, tf.gather(pos_t, i))
        else:
            x = tf.numpy_function(images.read, [tf.gather(pos_t, i)], tf.uint8, stateful=False)
            x.set_shape((None, s, s, 3))
        return x, tf.gather(y_t, i)

    idx = tf.data.Dataset.range(n)
    if seed is not None:
        # A buffer as large as the split is a full shuffle; a fresh order each
        # epoch, yet the sequence of orders is fixed by the seed.
        idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            idx = idx.repeat()
    idx = idx.batch(batch_size)
    ds = idx.map(read, num_parallel_calls=tf.data.AUTOTUNE)  # keeps the order
    # The cast in a map of its own, not parallel: parallel casts competed for the cores
    # (10-12k img/s at 224 px vs 21-23k, measured on 2 cores; benchmarks/data_memory.py).
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)
    # engine/featcache.py maps these index batches (the same shuffle object, so the same
    # orders) to cached features: no image is read or hashed per epoch.
    ds.index_batches, ds.labels = idx, y
    return ds


def load(info: DatasetInfo, image_size: int, batch_size: int, seed: int,
         repeat_train: bool = False, *, memory_budget_mb: float | None = None,
         cache_dir=None, progress: bool = False) -> Splits:
    """Builds the train/validation/test pipelines from ``scan``'s kept images.

    Images are float32 in 0..255 of shape ``(image_size, image_size, 3)``,
    whole numbers (the store keeps uint8: at most 0.5 grey levels from Keras'
    float bilinear output): no scaling here, since each backbone's
    ``preprocess_input`` runs inside the model. Labels are float32 0/1 of
    shape (1,) for 2 classes (binary cross-entropy), else one-hot of shape
    (num_classes,) (categorical). Every image is decoded once, here (EXIF
    orientation applied), and served from the store afterwards.

    ``splits.train.file_order`` is train in file order, unshuffled and finite
    (engine/featcache.py reads it: the shuffle below runs over indices). Each
    pipeline also carries ``index_batches`` (its batches of file-order indices,
    shuffled as the images are) and ``labels`` (per file-order index).

    Args:
        info: The result of ``scan``.
        image_size: Side length images are resized to (bilinear).
        batch_size: Batch size of all three pipelines.
        seed: Seeds the train shuffle: each epoch gets a new order, and the
            sequence of orders is the same in every run with this seed.
        repeat_train: Repeat train forever (then pass ``steps_per_epoch``).
        memory_budget_mb: The store stays in RAM up to this size (MB), else
            goes to a file in ``cache_dir``; None: ``store.default_budget_mb()``.
            Never changes the pixels.
        cache_dir: Folder of on-disk stores; default the dataset's cache folder.
        progress: A progress bar while decoding takes more than 2 s.

    Raises:
        DataError: A kept file cannot be decoded any more (names it).
        OSError: The on-disk store cannot be written.
    """
    k = len(info.class_names)
    index: dict[str, int] = {}  # content key -> store position: one copy per distinct image
    sources: list[str] = []
    for split in SPLITS:
        for e in info.files[split]:
            key = e.digest or e.source
            if key not in index:
                index[key] = len(sources)
                sources.append(e.source)
    budget = store.default_budget_mb() if memory_budget_mb is None else memory_budget_mb
    cache = Path(cache_dir) if cache_dir else imagecheck.default_cache_dir(info.path)
    images = store.build(sources, list(index), image_size, int(budget * 2**20), cache, progress)
    size_mb = store.estimate_bytes(len(sources), image_size) / 2**20
    storage = f"{images.where} ({len(sources)} images, {size_mb:.0f} MB)"
    log.info("decoded images: %s", storage)
    pipelines, counts = {}, {}
    for split in SPLITS:
        entries = info.files[split]
        labels = np.array([e.label for e in entries], dtype=np.int64)
        y = labels[:, None].astype(np.float32) if k == 2 else np.eye(k, dtype=np.float32)[labels]
        pos = np.array([index[e.digest or e.source] for e in entries], dtype=np.int64)
        counts[split] = len(entries)
        if split == "train":
            ds = _pipeline(images, pos, y, batch_size, seed, repeat_train)
            ds.file_order = _pipeline(images, pos, y, batch_size)
        else:
            ds = _pipeline(images, pos, y, batch_size)
        pipelines[split] = ds
    test_paths = [info.split_path(e) for e in info.files["test"]]
    return Splits(**pipelines, test_paths=test_paths, class_names=list(info.class_names),
                  num_classes=k, counts=counts, skipped=list(info.skipped), storage=storage)
