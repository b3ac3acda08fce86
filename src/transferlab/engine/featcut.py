"""Frozen features of a whole base computed through the fine-tuning cut, so both are cached.

A sweep over ``freeze=all,last4`` asks the feature cache for two cuts of one
base: its output (``all``) and the input of the first trainable layer among
the last four (``last4``, e.g. ``Conv_1`` of MobileNetV2). Each used to run
every image through the frozen layers on its own (~5 s for 2,000 images of
MobileNetV2@96 on 2 cores, twice). When the base's output is extracted,
``fine_tuning_cut`` finds the cut the lecture's fine-tuning uses (the input of
the first layer with a kernel among the last four, where it is one tensor
everything after depends on); the images go through the base up to there
once, those features are saved as that cut's own cache entry (the key is
exactly the one a ``last4`` job computes: same prefix layers and weights,
same images), and the base's output is computed from them by the remaining
frozen layers. The same layers run on the same values either way.
"""

from __future__ import annotations

import numpy as np

LAST = 4  # the lecture's fine-tuning: base.layers[:-4] frozen


def fine_tuning_cut(base):
    """``(cut name, prefix model, rest model)`` at the lecture's fine-tuning cut, or None.

    The cut is the input of the first layer with a kernel among the base's
    last ``LAST`` layers, when that input is a single tensor the base's
    output depends on alone (not inside a residual block).

    Building the two models adds call nodes to the layers around the cut,
    which ``featcache.decide`` then reads as a shared layer: call it only
    where no later phase of the job decides on the same base.
    """
    import keras

    layers = base.layers
    for layer in layers[max(1, len(layers) - LAST):]:
        if not any(w.path.endswith("kernel") for w in layer.weights):
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        if len(inputs) != 1:
            return None
        try:
            rest = keras.Model(inputs[0], base.outputs[0], name=f"{base.name}_rest")
            prefix = keras.Model(base.inputs, inputs[0], name=f"{base.name}_prefix")
        except ValueError:  # later layers read tensors from before the cut
            return None
        return f"before {layer.name}", prefix, rest
    return None


def through(rest, feats: np.ndarray, batch_size: int) -> np.ndarray:
    """``rest`` (frozen, inference mode) applied to cached features, batch by batch."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, *feats.shape[1:]), tf.float32)])
    def forward(x):
        return rest(x, training=False)

    out = [np.asarray(forward(feats[i:i + batch_size]), dtype=np.float32)
           for i in range(0, len(feats), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *rest.outputs[0].shape[1:]), np.float32)


def extract_output(base, model, cfg, pre, sources, keys_fn, keys, folder, batch_size: int, extract):
    """The base's output features via the fine-tuning cut, whose entry is saved (or reused) too.

    Args:
        extract: ``featcache._extract`` (images -> unique features, keys).

    Returns:
        ``(features, unique keys, note)``, or None where the base has no such cut
        (the caller then extracts the output directly).
    """
    import time
    from pathlib import Path

    from transferlab.engine import featstore as store

    cut = fine_tuning_cut(base)
    if cut is None:
        return None
    name, prefix, rest = cut
    material = store.material(cfg, model, name, prefix, keys)
    entry = Path(folder) / store.entry_key(material)
    t0 = time.perf_counter()
    with store.Lock(entry.parent / f"{entry.name}.lock"):  # the fine-tuning job's own lock
        loaded, _ = store.load(entry, material, keys)
        if loaded is not None:
            feats, uniq = loaded
            note = f"from the cached features {name} ({entry.name})"
        else:
            feats, uniq = extract(prefix, pre, sources, keys_fn, batch_size)
            note = f"through the cut {name}"
            try:
                store.save(entry, material, feats, uniq, time.perf_counter() - t0)
                note += f", whose features were saved for fine-tuning jobs ({entry.name})"
            except OSError as e:
                note += f" (its features not saved: {e})"
    return through(rest, feats, batch_size), uniq, note
