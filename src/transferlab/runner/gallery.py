"""Per job: the test images it got most wrong, and Grad-CAM on a few (two artifacts).

``error_gallery.png``: the ``N_ERRORS`` test images with the highest loss
(-log of the probability given to the true class) as thumbnails, each with its
true class, the predicted class and that prediction's probability.
``gradcam.png``: Grad-CAM (Selvaraju et al. 2017, as in the keras-io recipe) for
the two highest-loss and the two most confidently right test images: the
gradient of the predicted class's score with respect to the backbone's output
feature map, averaged per channel, weights the channels; the positive part of
the sum, upsampled, is drawn over the image. Both need the trained model, so
they are made here in the job; the report only shows them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_ERRORS = 12
N_CAM = 4
EPS = 1e-7


def per_image_loss(true, probs) -> np.ndarray:
    """Cross-entropy of each image: -log p(true class), shape (n,)."""
    probs = np.asarray(probs, dtype=np.float64)
    return -np.log(np.clip(probs[np.arange(len(true)), np.asarray(true, int)], EPS, 1.0))


def test_images(splits, indices) -> np.ndarray:
    """The test split's images at ``indices`` (file order), float 0-255, (len, h, w, 3)."""
    want: dict[int, list[int]] = {}
    for k, i in enumerate(indices):  # an image may be asked for twice
        want.setdefault(int(i), []).append(k)
    out: list = [None] * len(indices)
    seen = 0
    for x, _ in splits.test:
        x = np.asarray(x)
        for j in range(len(x)):
            for k in want.get(seen + j, ()):
                out[k] = x[j]
        seen += len(x)
        if all(o is not None for o in out):
            break
    return np.stack(out) if out else np.zeros((0, 1, 1, 3), np.float32)


MIN_SIDE = 4  # a coarser map says nothing about where: go to an earlier layer


def cam_layer(base):
    """The layer to explain: the backbone's output (the keras-io recipe's last conv block)
    when it is at least ``MIN_SIDE`` px a side, else the deepest layer that is (MobileNetV3
    at 32 px ends at 1 x 1)."""
    def side(layer):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        return min(shape[1], shape[2]) if shape is not None and len(shape) == 4 and shape[1] else 0

    out = base.layers[-1]
    if side(out) >= MIN_SIDE:
        return out
    deep = [layer for layer in base.layers if side(layer) >= MIN_SIDE]
    return deep[-1] if deep else out


def gradcam(model, images: np.ndarray, classes) -> tuple[np.ndarray, str]:
    """Grad-CAM maps in [0, 1] and the name of the explained layer.

    Args:
        model: a transferlab classifier (layers ``preprocess``, ``base``, then the head).
        images: float 0-255, (n, h, w, 3).
        classes: the class to explain per image (a binary model: 0 or 1).

    Returns:
        ``(maps (n, h', w'), layer name)`` at that layer's resolution.
    """
    import keras
    import tensorflow as tf

    names = [layer.name for layer in model.layers]
    base = model.get_layer("base").base
    layer = cam_layer(base)
    grad_model = keras.Model(base.inputs, [layer.output, base.outputs[0]])
    x = model.get_layer("preprocess")(tf.convert_to_tensor(images, tf.float32))
    with tf.GradientTape() as tape:
        conv, out = grad_model(x, training=False)  # BatchNorm in inference mode, as in training
        for head in model.layers[names.index("base") + 1:]:
            out = head(out, training=False)
        out = tf.cast(out, tf.float32)
        cls = tf.constant(np.asarray(classes, np.int32))
        if out.shape[-1] == 1:  # sigmoid: p(class 1); class 0 is explained by 1 - p
            score = tf.where(cls == 1, out[:, 0], 1.0 - out[:, 0])
        else:
            score = tf.gather(out, cls, axis=1, batch_dims=1)
    grads = tape.gradient(score, conv)
    if grads is None or len(conv.shape) != 4:  # no spatial map to explain
        return np.zeros((len(images), 1, 1), np.float32), layer.name
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(conv, tf.float32), axis=-1)).numpy()
    top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return (cam / np.maximum(top, EPS)).astype(np.float32), layer.name


def _thumb(ax, image, title: str, cam=None) -> None:
    ax.imshow(np.clip(image, 0, 255).astype(np.uint8), interpolation="nearest")
    if cam is not None:
        h, w = image.shape[:2]
        ax.imshow(cam, cmap="jet", alpha=0.45, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                  interpolation="bilinear", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=90)


def write(model, splits, true, pred, probs, folder: Path) -> list[str]:
    """Writes error_gallery.png and gradcam.png into ``folder``; returns the file names."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from transferlab.report import fonts

    true, pred = np.asarray(true, int), np.asarray(pred, int)
    probs = np.asarray(probs)
    if len(true) == 0:
        return []
    labels, _ = fonts.labels(list(splits.class_names), 14)
    loss = per_image_loss(true, probs)
    worst = np.argsort(-loss, kind="stable")[:N_ERRORS]
    right = np.flatnonzero(true == pred)
    sure = right[np.argsort(loss[right], kind="stable")][: N_CAM // 2]
    cam_idx = np.concatenate([worst[: N_CAM - len(sure)], sure]).astype(int)
    images = test_images(splits, np.concatenate([worst, cam_idx]))
    written = []
    with rc_context(fonts.rc()):
        cols = min(6, len(worst))
        rows = int(np.ceil(len(worst) / cols))
        fig = Figure(figsize=(1.9 * cols, 2.2 * rows + 0.4))
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, i, img in zip(axes, worst, images[: len(worst)]):
            _thumb(ax, img, f"true {labels[true[i]]}\npred {labels[pred[i]]} "
                            f"{probs[i, pred[i]]:.2f}")
        for ax in axes[len(worst):]:
            ax.axis("off")
        fig.suptitle("Highest-loss test images (probability of the predicted class)", fontsize=9)
        fig.tight_layout()
        _save(fig, folder / "error_gallery.png")
        written.append("error_gallery.png")
        cams, layer = gradcam(model, images[len(worst):], pred[cam_idx])
        fig = Figure(figsize=(2.2 * len(cam_idx), 2.7))
        for ax, i, img, cam in zip(np.atleast_1d(fig.subplots(1, len(cam_idx))), cam_idx,
                                   images[len(worst):], cams):
            _thumb(ax, img, f"true {labels[true[i]]}\npred {labels[pred[i]]} "
                            f"{probs[i, pred[i]]:.2f}", cam)
        fig.suptitle(f"Grad-CAM of the predicted class at {layer} "
                     f"({cams.shape[1]}x{cams.shape[2]})", fontsize=9)
        fig.tight_layout()
        _save(fig, folder / "gradcam.png")
        written.append("gradcam.png")
    return written
