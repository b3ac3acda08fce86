"""The decoded images of a data set, compact: one uint8 array (N, S, S, 3), in RAM or on disk.

Every image is decoded once (``decode.read_rgb``: Pillow, EXIF upright),
resized to the model's input size S with ``tf.image.resize(..., "bilinear")``
as Keras' ``image_dataset_from_directory`` does, then rounded to uint8. The
rounding moves a pixel by at most 0.5 grey levels from Keras' float32 output
and costs 3 bytes per pixel instead of 12: 0.15 MB per image at 224 px
(0.6 MB as float32).

Where it lives (``runtime.memory_budget_mb``, outside the config hash):

- decoded once into one file ``<dataset cache>/images_<S>px_<key>.u8`` keyed
  by the images' content digests, S, the decoder version and TensorFlow's
  version, written atomically under a file lock: every job of a sweep (in a
  row, in parallel, the folds of a k-fold sweep) and every later sweep on the
  same images reads it instead of decoding again;
- below the budget, a job copies it into RAM (a non-trainable ``tf.Variable``
  filled by ``scatter_update``, so it is never copied whole; batches are
  ``tf.gather``-ed in the graph, without a Python call); a read-only cache
  folder: decoded straight into RAM;
- above it, batches are read from the file with ``os.pread`` (plain reads, no
  memory map), so the page cache is not counted in a job's RSS: its peak
  stays flat however large the data set. Delete ``images_*.u8`` to free disk.

Both serve the same bytes to the same pipeline (data/pipeline.py), so the
budget never changes a job's numbers (tests/test_store.py checks it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from transferlab.data.decode import DECODER_VERSION, read_rgb

RAM_SHARE = 0.25  # default budget: this share of physical RAM, split among parallel jobs


def default_budget_mb(parallel_jobs: int = 1) -> int:
    """A quarter of physical RAM divided among the jobs that run at once, in MB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (not POSIX)
        total = 8 * 2**30
    return int(total * RAM_SHARE / max(1, parallel_jobs) / 2**20)


def estimate_bytes(n_images: int, size: int) -> int:
    """Size of the store of ``n_images`` images at ``size`` x ``size`` px (uint8 RGB)."""
    return n_images * size * size * 3


class ImageStore:
    """``n`` uint8 images of shape (size, size, 3): a ``tf.Variable`` or a file.

    ``read(positions)`` returns a uint8 array (len(positions), size, size, 3);
    ``where`` is ``"memory"`` or the file's path.
    """

    def __init__(self, n: int, size: int, variable=None, path: Path | None = None):
        self.n, self.size = n, size
        self.image_bytes = size * size * 3
        self.variable, self.path = variable, path
        self._fd = os.open(path, os.O_RDONLY) if path is not None else None

    @property
    def where(self) -> str:
        return "memory" if self.path is None else str(self.path)

    def read(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self.variable is not None:
            import tensorflow as tf

            return tf.gather(self.variable, positions).numpy()
        out = np.empty((len(positions), self.size, self.size, 3), np.uint8)
        flat = out.reshape(len(positions), -1)
        for i, p in enumerate(positions):  # pread: no memory map, no page cache in our RSS
            buf = os.pread(self._fd, self.image_bytes, int(p) * self.image_bytes)
            if len(buf) != self.image_bytes:
                raise OSError(f"{self.path}: short read at image {p} (file changed?)")
            flat[i] = np.frombuffer(buf, np.uint8)
        return out

    def __del__(self, _close=os.close):  # bound now: at interpreter exit `os` may be gone
        if getattr(self, "_fd", None) is not None:
            _close(self._fd)
            self._fd = None


def store_key(keys: list[str], size: int) -> str:
    """Names a store by its images' content keys (in store order), size and decoder."""
    import tensorflow as tf

    h = hashlib.sha256(f"{size}|{DECODER_VERSION}|{tf.__version__}\n".encode())
    h.update("\n".join(keys).encode())
    return h.hexdigest()[:20]


def _resized(size: int, on_error: list):
    """path (tf.string) -> uint8 (size, size, 3): read_rgb, bilinear resize, round."""
    import tensorflow as tf

    def read(path):
        path = np.asarray(path).item().decode()  # bytes in tf.data, a 0-d array when eager
        try:
            return read_rgb(path)[0]
        except Exception as e:  # named by build(): TF's wrapper loses the path
            on_error.append((path, e))
            raise

    def fn(path):
        img = tf.numpy_function(read, [path], tf.uint8, stateful=False)
        img.set_shape((None, None, 3))
        img = tf.image.resize(img, (size, size), method="bilinear")  # float32, as Keras'
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    return fn


def decode_resized(path, size: int) -> np.ndarray:
    """One image as the store holds it: uint8 (size, size, 3) (``predict`` and export)."""
    import tensorflow as tf

    return _resized(size, [])(tf.constant(str(path))).numpy()


def _fill(sources: list[str], size: int, write, progress: bool) -> None:
    """Decodes ``sources`` in order, handing ``write`` uint8 batches (k, size, size, 3)."""
    import tensorflow as tf
    from transferlab.data.folder import DataError
    from transferlab.data.progress import bar as progress_bar

    errors: list = []
    ds = (tf.data.Dataset.from_tensor_slices(tf.constant(sources, tf.string))
          .map(_resized(size, errors), num_parallel_calls=tf.data.AUTOTUNE)  # keeps the order
          .batch(64).prefetch(2))
    bar = progress_bar(f"decoding @{size}px", len(sources), progress)
    try:
        for batch in ds:
            write(batch.numpy())
            bar.update(len(batch))
    except tf.errors.OpError as e:
        path, err = errors[0] if errors else ("?", e)
        raise DataError(f"Cannot read {path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                        "it changed or vanished since the scan. Delete or re-save it, "
                        "then rerun (the scan checks it again).") from None
    finally:
        bar.close()


def build(sources: list[str], keys: list[str], size: int, budget_bytes: int, cache_dir: Path,
          progress: bool = False) -> ImageStore:
    """The store of ``sources`` (decoded in this order) at ``size`` px.

    Args:
        sources: Image files, one per store position.
        keys: Content key of each (the sha1 digests), naming the on-disk file.
        size: Side length in pixels.
        budget_bytes: In RAM if ``estimate_bytes`` is at most this, else on disk.
        cache_dir: Folder of the on-disk stores.
        progress: A progress bar while decoding takes more than 2 s.

    Raises:
        DataError: A file cannot be decoded (named).
        OSError: The on-disk store cannot be written (disk full, read-only folder).
    """
    n = len(sources)
    try:
        path = _shared_file(sources, keys, size, cache_dir, progress)
    except OSError:
        if estimate_bytes(n, size) > budget_bytes:
            raise  # nowhere to put it: the caller names the folder
        path = None  # a read-only cache folder: decode straight into RAM
    if estimate_bytes(n, size) > budget_bytes:
        return ImageStore(n, size, path=path)
    import tensorflow as tf

    var = tf.Variable(tf.zeros((n, size, size, 3), tf.uint8), trainable=False)
    filled = [0]

    def to_variable(batch):  # a slice assign would copy the whole variable
        var.scatter_update(tf.IndexedSlices(batch, tf.range(filled[0], filled[0] + len(batch))))
        filled[0] += len(batch)

    if path is None:
        _fill(sources, size, to_variable, progress)
    else:  # the bytes an earlier job (or this one, just now) decoded: same numbers, no decoding
        disk = ImageStore(n, size, path=path)
        for start in range(0, n, 256):
            to_variable(disk.read(np.arange(start, min(n, start + 256))))
    return ImageStore(n, size, variable=var)


def _shared_file(sources: list[str], keys: list[str], size: int, cache_dir: Path,
                 progress: bool) -> Path:
    """``<cache_dir>/images_<size>px_<key>.u8``, decoded once and shared: every job of a sweep,
    parallel or not, and every later sweep on the same images and size reads it instead of
    decoding again (a RAM store is filled from it)."""
    from filelock import FileLock

    n = len(sources)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"images_{size}px_{store_key(keys, size)}.u8"
    with FileLock(str(path) + ".lock"):  # parallel jobs: one fills, the others wait and share
        if not (path.is_file() and path.stat().st_size == estimate_bytes(n, size)):
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    _fill(sources, size, lambda b: f.write(b.tobytes()), progress)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    return path
