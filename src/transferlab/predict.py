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
    notes = [f"run {run_id}" + (f" ({run})" if run.startswith(pretrained.LATEST) else "")
             + f": {r.data.tags.get('backbone', '?')} @{size}px, classes {', '.join(names)}"]
    return Predictor(model, list(names), size, source=f"run {run_id}", binary=outputs == 1, notes=notes)


def from_imagenet(backbone: str, weights: str | None = None) -> Predictor:
    """A Keras application with its ImageNet head (``include_top=True``) at its own input size.

    Args:
        backbone: registry name, e.g. ``vgg19``.
        weights: a local full-top weights file, or None for ``"imagenet"``
            (downloaded once into ``~/.keras/models``).

    Raises:
        PredictError: unknown backbone, missing file, a file that does not fit,
            the download failed.
    """
    from transferlab.models import registry as backbones
    from transferlab.models import weights as resolver
    from transferlab.models.pretrained import PretrainedError

    try:
        s = backbones.spec(backbone)
    except KeyError as e:
        raise PredictError(str(e.args[0])) from None
    if weights is not None and not os.path.isfile(weights):
        raise PredictError(f"--weights {weights}: no such file.")
    try:  # Keras' ImageNet graph whatever the file's origin (see models/weights.py)
        model = resolver.build(backbone, s.default_size, weights or "imagenet", include_top=True)
    except PretrainedError as e:
        raise PredictError(str(e)) from None
    except backbones.WeightsUnavailable as e:
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
        raise PredictError(
            f"Could not download the ImageNet weights of {backbone} with its top ({e.__cause__}). "
            f"Fix: --weights <file> (a Keras {s.constructor} weights file with the top, "
            f"include_top=True), or copy that file into {cache} on this machine.") from None
    classes = imagenet_classes()
    if int(model.output_shape[-1]) != len(classes):
        raise PredictError(f"{backbone}'s head has {model.output_shape[-1]} outputs, not the "
                           f"{len(classes)} ImageNet classes.")
    size = int(model.input_shape[1])
    source = weights or "imagenet"
    return Predictor(model, [n for _, n in classes], size, preprocess=backbones.preprocess_fn(backbone),
                     source=source, notes=[f"{backbone} @{size}px, ImageNet head, weights {source}"])


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
