"""The on-disk store of the frozen-feature cache (featcache.py decides and uses it).

One folder per key under ``cache_dir``: ``features.npy``, ``keys.npy`` (the
64-bit pixel fingerprint of each image) and ``meta.json`` with the key
material and each array's sha256. An entry is used only when its material
equals the job's and both checksums match; it is written to a temporary
folder and renamed into place, under a per-key file lock, so parallel jobs
compute it once and a kill mid-write leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

FORMAT = 1  # bump when the stored layout or the key changes

try:  # POSIX; elsewhere parallel jobs may both compute the same features
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def cache_dir(cfg) -> Path:
    """``runtime.feature_cache_dir``; the runner passes its default (``<mlruns>/feature_cache``).

    Raises:
        ValueError: neither is given.
    """
    if not cfg.runtime.get("feature_cache_dir"):
        raise ValueError("the feature cache needs a folder: runtime.feature_cache_dir or fit(feature_dir=...)")
    return Path(cfg.runtime.feature_cache_dir)


def weights_hash(layers_model) -> str:
    """sha256 over a model's weight values (name, shape and bytes of each)."""
    h = hashlib.sha256()
    for w in layers_model.weights:
        a = np.ascontiguousarray(w.numpy())
        h.update(f"{w.path}:{a.dtype}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def material(cfg, model, cut_name: str, prefix, keys: np.ndarray) -> dict:
    """Everything the features depend on; its hash is the entry's name (``entry_key``)."""
    import keras
    import tensorflow as tf

    pre = model.get_layer("preprocess")
    return {
        "format": FORMAT,
        "backbone": cfg.backbone.name,
        "weights_sha256": weights_hash(prefix),
        "input_shape": list(model.inputs[0].shape[1:]),
        "cut": cut_name,
        "prefix_layers": len(prefix.layers),
        "preprocess": f"{pre.backbone}:{pre._fn.__module__}.{pre._fn.__name__}",  # noqa: SLF001
        "dtype_policy": keras.mixed_precision.global_policy().name,
        "versions": f"tf {tf.__version__}, keras {keras.__version__}",
        "images": int(len(keys)),
        "images_sha256": hashlib.sha256(np.sort(keys).tobytes()).hexdigest(),
    }


def entry_key(material_: dict) -> str:
    """The cache entry's folder name: a hash of its key material."""
    return hashlib.sha256(json.dumps(material_, sort_keys=True).encode()).hexdigest()[:24]


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def load(entry: Path, material: dict, keys: np.ndarray):
    """(features, keys) from a cache entry, or (None, why it cannot be used)."""
    meta_file = entry / "meta.json"
    if not meta_file.exists():
        return None, "missing"
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("material") != material:
            return None, "stale (it was made for other weights, data or settings)"
        k = np.load(entry / "keys.npy", allow_pickle=False)
        f = np.load(entry / "features.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        return None, f"corrupt ({type(e).__name__}: {str(e)[:120]})"
    if digest(k) != meta.get("keys_sha256") or digest(f) != meta.get("features_sha256"):
        return None, "corrupt (checksum mismatch)"
    if len(k) != len(f) or not np.array_equal(k, np.unique(keys)):
        return None, "stale (it holds other images)"
    return (f, k), ""


def save(entry: Path, material: dict, feats: np.ndarray, keys: np.ndarray, seconds: float) -> None:
    """Writes an entry under a temporary name, then renames it into place.

    Raises:
        DiskFull: no space left (the temporary entry removed, nothing else touched).
    """
    from transferlab.engine.diskfull import writing

    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(entry, feats.nbytes + keys.nbytes + 64 * 1024, partial=(tmp,)):
        tmp.mkdir(parents=True)
        np.save(tmp / "features.npy", feats, allow_pickle=False)
        np.save(tmp / "keys.npy", keys, allow_pickle=False)
        meta = {"material": material, "features_sha256": digest(feats), "keys_sha256": digest(keys),
                "shape": list(feats.shape), "dtype": str(feats.dtype), "build_seconds": round(seconds, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(entry, ignore_errors=True)  # a stale or corrupt entry (we hold the lock)
    os.replace(tmp, entry)


class Lock:
    """An exclusive lock file per cache key, so parallel jobs compute features once."""

    def __init__(self, path: Path):
        self.path, self.f = path, None

    def __enter__(self):
        if fcntl is not None:
            try:
                self.f = open(self.path, "w")
                fcntl.flock(self.f, fcntl.LOCK_EX)
            except OSError:
                self.f = None
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()
