"""``transferlab predict``: classify image files with a trained run's model, an exported
model (``--model``, see export.py) or an ImageNet head.

Images are loaded the way training loads them (``data.store.decode_resized``: the
one Pillow decoder, EXIF orientation applied, RGB, bilinear resize to the model's
input size rounded to whole grey levels, float 0-255, no /255): a job's model
preprocesses inside, and the ImageNet path applies the backbone's own
``preprocess_input`` before the model. Unreadable files are reported by
name and skipped; the others are still classified.

ImageNet class names come from ``data/imagenet_class_index.json`` shipped in
the package, in the format and order of Keras' own file (which
``decode_predictions`` would download at run time): index = position of the
WordNet synset id in sorted order, name = the synset's first lemma with
spaces as underscores. It was generated from timm's
``timm/data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``
and checked against Keras' indices (0 tench, 1 goldfish, 2 great_white_shark,
207 golden_retriever, 281 tabby, 409 analog_clock, 999 toilet_tissue).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

DEFAULT_TOP = 5


class PredictError(ValueError):
    """A user-facing error of ``transferlab predict``; the message names the fix."""


@dataclass
class Predictor:
    """A model, what to do to 0-255 pixels before it, and its class names."""

    model: object
    class_names: list[str]
    size: int
    preprocess: object = None  # None: the model preprocesses inside
    source: str = ""
    binary: bool = False
    notes: list[str] = field(default_factory=list)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        x = images if self.preprocess is None else self.preprocess(images.copy())
        p = np.asarray(self.model.predict(x, verbose=0, batch_size=32), dtype=np.float64)
        if self.binary:  # Dense(1, sigmoid): P(class 1)
            p = np.concatenate([1.0 - p, p], axis=1)
        return p


def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 (synset id, name) pairs in Keras' ImageNet class order, offline."""
    text = (resources.files("transferlab") / "data" / "imagenet_class_index.json").read_text()
    index = json.loads(text)
    return [tuple(index[str(i)]) for i in range(len(index))]


def load_image(path, size: int) -> np.ndarray:
    """One image as training sees it: float32 ``(size, size, 3)`` RGB in 0..255.

    Raises:
        PredictError: the file is missing or not a readable image (names it).
    """
    from transferlab.data import imagecheck, store

    p = Path(path)
    if not p.is_file():
        raise PredictError(f"cannot read {path}: no such file")
    verdict = imagecheck.check(p)  # one file the user names: no pixel limit
    if verdict.kind == imagecheck.SKIP:
        raise PredictError(f"cannot read {path}: {verdict.detail}")
    try:
        return store.decode_resized(p, size).astype(np.float32)
    except Exception as e:  # changed since the check
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise PredictError(f"cannot read {path}: {type(e).__name__}: {first}") from None


def from_run(tracking_uri: str, run: str) -> Predictor:
    """The model a job logged with ``tracking.log_model=true`` and its ``classes.json``.

    Args:
        tracking_uri: the MLflow store.
        run: a run id, or ``latest:<experiment>`` (the newest FINISHED job run
            with a logged model there).

    Raises:
        PredictError: unknown run, no logged model, no or inconsistent classes.json.
    """
    import mlflow

    from transferlab.models import pretrained

    spec = pretrained.RUN_PREFIX + run
    try:
        r, loc = pretrained.resolve(spec, tracking_uri, what=f"--run {run}")
        model = pretrained.load_logged_model(tracking_uri, loc)
    except pretrained.PretrainedError as e:
        raise PredictError(str(e)) from None
    run_id = r.info.run_id
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="classes.json",
                                                        dst_path=tmp, tracking_uri=tracking_uri)
            names = json.loads(Path(local).read_text())
    except Exception as e:
        raise PredictError(f"run {run_id} has no readable classes.json artifact ({type(e).__name__}); "
                           "it was not logged by a transferlab job. Fix: use a job run's id.") from None
    outputs = int(model.output_shape[-1])
    if len(names) != (2 if outputs == 1 else outputs):
        raise PredictError(f"run {run_id}: classes.json lists {len(names)} classes but the model "
                           f"has {outputs} outputs.")
    size = int(model.input_shape[1])
    label = r.data.tags.get("backbone_label") or r.data.tags.get("backbone", "?")
    notes = [f"run {run_id}" + (f" ({run})" if run.startswith(pretrained.LATEST) else "")
             + f": {label} @{size}px, classes {', '.join(names)}"]
    return Predictor(model, list(names), size, source=f"run {run_id}", binary=outputs == 1, notes=notes)


_FLAGS = (("backbone.depth_multiplier=", "--depth-multiplier "), ("backbone.alpha=", "--alpha "),
          ("backbone.minimalistic=true", "--minimalistic"), ("backbone=", "--backbone "))


def _as_flags(text: str) -> str:
    """A config-key message in predict's terms (``backbone.alpha=0.25`` -> ``--alpha 0.25``)."""
    for key, flag in _FLAGS:
        text = text.replace(key, flag)
    return text


def _run_options(weights: str, tracking_uri: str | None) -> tuple[dict, int | None]:
    """A job run's constructor options and image size (its params), for ``--weights run:<id>``
    without ``--alpha``/``--image-size``; a run of a plain application has none ({}, None)."""
    from transferlab.models import options as option_table
    from transferlab.models import pretrained

    if not tracking_uri:
        raise PredictError(f"--weights {weights}: a run needs its MLflow store (--tracking-uri).")
    try:
        run, _ = pretrained.resolve(weights, tracking_uri, what=f"--weights {weights}")
    except pretrained.PretrainedError as e:
        raise PredictError(str(e)) from None
    p = run.data.params
    cast = {"alpha": float, "depth_multiplier": int, "minimalistic": lambda v: v == "True"}
    opts = {k: cast[k](p[f"backbone.{k}"]) for k in option_table.KEYS
            if p.get(f"backbone.{k}") not in (None, "None")}
    size = p.get("image_size")
    return opts, (int(size) if size not in (None, "None") else None)


def from_imagenet(backbone: str, weights: str | None = None, size: int | None = None,
                  options: dict | None = None, tracking_uri: str | None = None) -> Predictor:
    """A Keras application with its ImageNet head (``include_top=True``).

    Args:
        backbone: registry name, e.g. ``vgg19``.
        weights: a local full-top weights file (``.h5`` / ``.weights.h5``), a ``.keras``
            copy of the application, ``run:<id>`` (a run that logged it), or None for
            ``"imagenet"`` (downloaded once into ``~/.keras/models``).
        size: input side in pixels; default: the size a Keras ImageNet file's name states
            (``mobilenet_2_5_128_tf.h5``: 128), a job run's ``image_size``, else the
            backbone's own.
        options: Keras' constructor options (``{"alpha": 0.25}``); default: a job run's,
            else Keras' defaults.
        tracking_uri: the MLflow store of a ``run:`` spec.

    Raises:
        PredictError: unknown backbone, an option it does not take, a size Keras does not
            build its top at, missing file, a file that does not fit (naming the options
            its shapes belong to), the download failed.
    """
    from transferlab.models import options as option_table
    from transferlab.models import pretrained
    from transferlab.models import registry as backbones
    from transferlab.models import weights as resolver

    how = pretrained.kind(weights)
    if how in ("file", "keras") and not os.path.isfile(weights):
        raise PredictError(f"--weights {weights}: no such file.")
    run_opts, run_size = _run_options(weights, tracking_uri) if how == "run" else ({}, None)
    try:
        s = backbones.spec(backbone)
        opts = option_table.resolve(backbone, options or run_opts)
    except KeyError as e:
        raise PredictError(str(e.args[0])) from None
    except option_table.OptionError as e:
        raise PredictError(_as_flags(str(e))) from None
    label, notes = option_table.label(backbone, opts), []
    if size is None:
        size = (option_table.size_of_file(backbone, opts, weights) if how == "file" else run_size)
        if size is not None:
            notes.append(f"--image-size {size}: the size {'its file name' if how == 'file' else 'the run'} states")
        size = size or s.default_size
    top = option_table.top_sizes(backbone) if option_table.has_imagenet(backbone, opts) else None
    if size < s.min_size or (top and size not in top):
        allowed = ", ".join(map(str, top)) if top else f">= {s.min_size}"
        raise PredictError(f"--image-size {size}: Keras builds {label} with its ImageNet top at "
                           f"{allowed} px. Fix: --image-size {top[-1] if top else s.min_size}.")
    try:  # Keras' ImageNet graph whatever the file's origin (see models/weights.py)
        model = resolver.build(backbone, size, weights or "imagenet", tracking_uri, include_top=True,
                               options=opts)
    except pretrained.PretrainedError as e:
        hint = (f" A job's own model classifies with its own head: transferlab predict --run "
                f"{weights[len(pretrained.RUN_PREFIX):]}" if how == "run" else "")
        raise PredictError(_as_flags(str(e)) + hint) from None
    except backbones.WeightsUnavailable as e:
        from transferlab.models.construct import keras_cache

        file = option_table.imagenet_file(backbone, opts, size, True)
        raise PredictError(
            f"Could not download the ImageNet weights of {label} with its top ({e.__cause__}). "
            f"Fix: --weights <file> (a Keras {s.constructor} weights file with the top, "
            f"include_top=True{', Keras names it ' + file if file else ''}), or copy that file "
            f"into {keras_cache()} on this machine.") from None
    classes = imagenet_classes()
    if int(model.output_shape[-1]) != len(classes):
        raise PredictError(f"{backbone}'s head has {model.output_shape[-1]} outputs, not the "
                           f"{len(classes)} ImageNet classes.")
    size = int(model.input_shape[1])
    source = weights or "imagenet"
    return Predictor(model, [n for _, n in classes], size, preprocess=backbones.preprocess_fn(backbone),
                     source=source, notes=[f"{label} @{size}px, ImageNet head, weights {source}", *notes])


def from_export(path) -> Predictor:
    """A model written by ``transferlab export`` (SavedModel folder, ``.tflite`` or ``.onnx``).

    Args:
        path: the export folder (``--out``) or the model file / SavedModel folder in it;
            class names come from the ``classes.json`` written beside it.

    Raises:
        PredictError: nothing exported there, several models, no or
            inconsistent ``classes.json``.
    """
    from transferlab import exported

    try:
        model, names, meta = exported.load(path)
    except exported.ExportedError as e:
        raise PredictError(str(e)) from None
    size, outputs = int(model.input_shape[1]), int(model.output_shape[-1])
    src = f"{model.fmt} {model.path}" + (f" (run {meta['run_id']})" if meta.get("run_id") else "")
    return Predictor(model, names, size, source=src, binary=outputs == 1,
                     notes=[f"{src}: @{size}px, classes {', '.join(names)}"])


def format_line(path: str, probs: np.ndarray, names: list[str], top: int) -> str:
    """``path: <class> <p>`` and, with top > 1, the top-k list."""
    order = np.argsort(-probs, kind="stable")[:max(1, min(top, len(names)))]
    line = f"{path}: {names[order[0]]} {probs[order[0]]:.3f}"
    if len(order) > 1:
        line += f"  (top-{len(order)}: " + ", ".join(f"{names[i]} {probs[i]:.3f}" for i in order) + ")"
    return line


def run(predictor: Predictor, images: list[str], top: int | None, out, err) -> int:
    """Classifies ``images``; one line per image on ``out``, errors on ``err``.

    Returns:
        0 if every image was classified, else 1.
    """
    if top is None:  # the top class for two classes, else the top five
        top = 1 if len(predictor.class_names) == 2 else DEFAULT_TOP
    loaded, paths, failed = [], [], 0
    for path in images:
        try:
            loaded.append(load_image(path, predictor.size))
            paths.append(path)
        except PredictError as e:
            failed += 1
            print(f"transferlab predict: error: {e}", file=err)
    if loaded:
        probs = predictor.probabilities(np.stack(loaded).astype(np.float32))
        for path, p in zip(paths, probs):
            print(format_line(path, p, predictor.class_names, top), file=out)
    if failed:
        print(f"transferlab predict: {failed} of {len(images)} image(s) could not be read", file=err)
    return 1 if failed else 0
