"""Frozen-feature caching: compute the frozen part of the model once, train the rest.

A model here is ``image -> preprocess -> base (inference mode) -> head``. When
the first layers of the base are frozen and nothing random runs before them
(no augmentation; the base in inference mode, or a random base that trains
run as plain Keras with no dropout or trainable BatchNorm before the cut),
their output for an image never changes during training. ``runtime.feature_cache`` then cuts
the model there:

- the *prefix* (preprocess + frozen base layers up to the cut) runs once per
  image, its outputs are stored on disk;
- a *head model* made of the SAME layer objects after the cut (the trainable
  tail of the base, if any, and the head) is trained on those features, so
  the full model ends up trained and is evaluated as usual.

The cut is the input of the first base layer with trainable weights (the
base's output for ``freeze=all``); it must be one tensor that everything
after it depends on alone, which holds for sequential bases (VGG) and at
block boundaries, not in the middle of a residual block.

Exactly the same batches, in the same order (featkeys.py): each image's
features are found by a 64-bit fingerprint of its pixels, and the training
pipeline's own shuffled index batches are mapped to those rows, so shuffling,
repetition and ``steps_per_epoch`` stay those of the data pipeline (its
shuffle state moves exactly as without the cache); an image missing from the
cache is an error, never a silent mismatch.

On disk (featstore.py; ``runtime.feature_cache_dir``, default ``<mlruns>/feature_cache``),
one folder per key; the key hashes everything the features depend on:
backbone, the prefix's weights (a hash of their values, so calibrated random
bases and local weight files are told apart), input size, cut layer,
preprocessing, dtype policy, TF/Keras versions and the pixel fingerprints of
the images. Each array's checksum is kept beside it: a corrupt or stale entry
is detected, rebuilt and replaced, never used. A file lock lets parallel jobs
share one computation.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.engine import featcut, featkeys
from transferlab.engine import featstore as store

MODES = ("auto", "on", "off")

class FeatureCacheError(RuntimeError):
    """``runtime.feature_cache=on`` where caching would change the result."""


@dataclass
class Decision:
    """Whether a phase trains on cached features, and why (not)."""

    use: bool
    reason: str  # why not, or where the cut is
    cut_index: int = -1  # index into base.layers of the first layer after the cut
    cut_name: str = ""  # "base output" or "before <layer>"
    tensor: object = None  # the KerasTensor at the cut
    tail: object = None  # keras.Model from the cut to the base's output (None: cut at output)


@dataclass
class Prepared:
    """What ``prepare`` hands to the fit loop: the splits as features."""

    train: object
    validation: object
    note: str  # for the log and the MLflow tag
    seconds: float
    test: object = None  # the test split as (features, labels), same order and batches


def _first_trainable(base) -> int:
    for i, layer in enumerate(base.layers):
        if layer.trainable and layer.trainable_weights:
            return i
    return len(base.layers)


def decide(model, base, cfg, splits) -> Decision:
    """Works out whether (and where) the current phase can train on cached features.

    Call after the phase's ``trainable`` flags are set. ``auto`` uses the cache
    only where the result is the same as without it; the reason is returned
    either way.
    """
    from transferlab.models.layers import FollowsTraining, InferenceMode, Preprocess

    mode = cfg.runtime.get("feature_cache", "off")
    if mode == "off":
        return Decision(False, "runtime.feature_cache=off")
    names = [layer.name for layer in model.layers]
    if "augment" in names:
        return Decision(False, f"augmentation (augment={cfg.augment.name}) runs before the frozen "
                               "layers, so their output differs every epoch")
    if "base" not in names or not isinstance(model.get_layer("base"), (InferenceMode, FollowsTraining)):
        return Decision(False, "the model has no inference-mode base layer to cut")
    before = model.layers[:names.index("base")]
    odd = [l.name for l in before if not isinstance(l, Preprocess) and type(l).__name__ != "InputLayer"]
    if odd:
        return Decision(False, f"layers {odd} run before the base")
    if featkeys.source(splits.train) is None or featkeys.source(splits.validation) is None:
        return Decision(False, "the data pipeline's images cannot be read without changing its "
                               "shuffle order (infinite pipeline without a shuffle stage)")
    layers = base.layers
    i = _first_trainable(base)
    if isinstance(model.get_layer("base"), FollowsTraining):  # plain Keras: training mode in fit
        moving = _random_in_training(layers[:i])
        if moving:
            return Decision(False, f"the random-init base runs in training mode (as plain Keras) "
                                   f"and {moving[0]!r} before the cut changes its output there")
    if i >= len(layers):
        return Decision(True, "cut at the base's output (base frozen)", i, "base output",
                        base.outputs[0], None)
    layer = layers[i]
    if not any(l.weights for l in layers[:i]):
        return Decision(False, f"nothing frozen before the first trainable layer {layer.name!r}")
    where = f"before {layer.name!r}, the first trainable layer"
    inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    if len(layer._inbound_nodes) != 1 or len(inputs) != 1:  # noqa: SLF001
        return Decision(False, f"no single cut {where}: it takes {len(inputs)} inputs")
    import keras

    try:
        tail = keras.Model(inputs[0], base.outputs[0], name=f"{base.name}_tail")
    except ValueError:
        return Decision(False, f"no single cut {where}: later layers also read tensors from "
                               "before it (e.g. a residual connection), so the frozen part has "
                               "more than one output")
    ids = {id(v) for v in tail.trainable_weights}
    if any(id(v) not in ids for v in base.trainable_weights):
        return Decision(False, f"no single cut {where}: trainable layers lie outside the tail")
    return Decision(True, f"cut {where}", i, f"before {layer.name}", inputs[0], tail)


def _random_in_training(layers) -> list[str]:
    """The layers whose output differs in training mode: dropout and noise layers, and
    BatchNormalization left trainable (batch statistics); frozen BatchNorm runs in
    inference mode in Keras whatever the mode."""
    import keras

    from transferlab.models.build import noise_kinds

    return [l.name for l in layers if isinstance(l, noise_kinds())
            or (isinstance(l, keras.layers.BatchNormalization) and l.trainable)]


def _extract(prefix, pre, sources, keys_fn, batch_size: int, *, total: int | None = None,
             progress: bool = False):
    """Features and keys of every image in ``sources`` (first occurrence of each content);
    a tqdm bar (count, rate, ETA over ``total`` images) when ``progress`` and it takes > 2 s."""
    import tensorflow as tf
    from transferlab.data.progress import bar as progress_bar

    spec = sources[0].element_spec[0]
    shape = spec.shape[1:] if spec.shape.rank == 4 else spec.shape

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), spec.dtype)])
    def forward(x):
        return prefix(pre(x), training=False)

    feats, keys = [], []
    with progress_bar("frozen features", total, progress) as bar:
        for src in sources:
            unb = src.unbatch() if src.element_spec[0].shape.rank == 4 else src
            for batch in unb.batch(batch_size):
                keys.append(keys_fn(batch[0]).numpy())
                feats.append(np.asarray(forward(batch[0]), dtype=np.float32))
                bar.update(len(keys[-1]))
    keys, feats = np.concatenate(keys), np.concatenate(feats)
    uniq, first = np.unique(keys, return_index=True)
    return np.ascontiguousarray(feats[first]), uniq


def head_model(decision: Decision, model):
    """The model trained on features: the base's tail (if any) and the head, SAME layer objects.

    Training it trains the full model's layers in place, so the full model is
    evaluated, saved and predicted with as usual afterwards.
    """
    import keras

    names = [layer.name for layer in model.layers]
    inp = keras.Input(tuple(decision.tensor.shape[1:]), name="features")
    wrapper = type(model.get_layer("base"))  # the tail runs in the mode the base runs in
    x = inp if decision.tail is None else wrapper(decision.tail, name="base_tail")(inp)
    for layer in model.layers[names.index("base") + 1:]:
        x = layer(x)
    return keras.Model(inp, x, name=f"{model.name}_on_features")


def prepare(decision: Decision, model, cfg, splits, folder: Path | None = None) -> Prepared:
    """Builds (or reuses) the features of a phase; returns train/validation as features.

    Args:
        decision: from ``decide`` (``use`` must be True).
        model: the full classifier (its preprocess layer and base compute the features).
        cfg: the job config.
        splits: ``data.Splits``; train, validation and test are mapped to
            features (test too, so the trained head scores it without
            running the frozen layers again: evaluate.test_scores).
        folder: the cache folder (default ``featstore.cache_dir(cfg)``).
    """
    import keras
    import tensorflow as tf

    t0 = time.perf_counter()
    base = model.get_layer("base").base
    prefix = base if decision.tail is None else keras.Model(base.inputs, decision.tensor,
                                                            name=f"{base.name}_prefix")
    pre = model.get_layer("preprocess")
    sources = [featkeys.source(splits.train), featkeys.source(splits.validation), splits.test]
    keys_fn = featkeys.keys_fn()
    keys = featkeys.image_keys(sources, keys_fn)
    material = store.material(cfg, model, decision.cut_name, prefix, keys)
    key = store.entry_key(material)
    folder = Path(folder) if folder is not None else store.cache_dir(cfg)
    entry = folder / key
    saved = ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = store.Lock(folder / f"{key}.lock")
    except OSError as e:
        lock, saved = store.Lock(Path(os.devnull)), f"; not saved: {e}"
    with lock:
        loaded, why = store.load(entry, material, keys) if not saved else (None, "missing")
        if loaded is not None:
            feats, uniq = loaded
            how = f"reused {entry} ({time.perf_counter() - t0:.1f} s)"
        else:
            t1 = time.perf_counter()
            bs = max(32, cfg.trainer.batch_size)
            single = not cfg.trainer.get("warmup_epochs")  # see featcut.fine_tuning_cut
            extract = functools.partial(_extract, total=sum(splits.counts.values()),
                                        progress=bool(cfg.runtime.get("verbose", 1)))
            via = None if decision.tail is not None or saved or not single else featcut.extract_output(
                base, model, cfg, pre, sources, keys_fn, keys, folder, bs, extract)
            feats, uniq = via[:2] if via else extract(prefix, pre, sources, keys_fn, bs)
            built = time.perf_counter() - t1
            how = (f"built in {built:.1f} s" if why == "missing"
                   else f"cache entry {entry.name} was {why}: rebuilt in {built:.1f} s")
            how += f" {via[2]}" if via else ""
            if not saved:
                try:
                    store.save(entry, material, feats, uniq, built)
                    how += f", saved to {entry}"
                except OSError as e:
                    saved = f"; not saved: {e}"
    train, validation, test = featkeys.as_features(splits, feats, uniq, keys, keys_fn)
    per_image = int(np.prod(feats.shape[1:]))
    note = (f"on: {decision.reason}; {len(uniq)} images x {per_image:,} features, {how}{saved}")
    return Prepared(train, validation, note, time.perf_counter() - t0, test)
