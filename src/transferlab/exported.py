"""Running an exported classifier: a SavedModel folder, a ``.tflite`` file or an ``.onnx`` file.

Every format takes what the Keras classifier takes: float32 ``(N, H, W, 3)``
RGB pixels in 0-255 (preprocessing is inside the model), and returns what it
returns: ``(N, 1)`` sigmoid for two classes, ``(N, K)`` softmax otherwise.
``load`` finds the model in an export folder (``transferlab export --out``)
or takes the file itself; ``classes.json`` and ``export.json`` beside it name
the classes and the source run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

SAVED_MODEL, TFLITE, ONNX = "saved_model", "tflite", "onnx"


class ExportedError(ValueError):
    """An exported model cannot be found or run; the message names the path and the fix."""


class Exported:
    """An exported classifier with Keras' ``predict`` interface (what ``predict.Predictor`` calls).

    Attributes:
        path: the SavedModel folder or the model file.
        fmt: ``saved_model`` | ``tflite`` | ``onnx``.
        input_shape, output_shape: as Keras writes them, batch ``None``.
    """

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = Path(path), fmt
        self._batch = None
        if fmt == SAVED_MODEL:
            import tensorflow as tf

            self._m = tf.saved_model.load(str(path))
            fn = self._m.signatures["serving_default"]
            spec = list(fn.structured_input_signature[1].values())[0]
            out = list(fn.structured_outputs.values())[0]
            self.input_shape = (None, *spec.shape[1:])
            self.output_shape = (None, *out.shape[1:])
        elif fmt == TFLITE:
            self._m = _tflite_interpreter(path)
            inp, out = self._m.get_input_details()[0], self._m.get_output_details()[0]
            self._in, self._out = inp["index"], out["index"]
            self.input_shape = (None, *map(int, inp["shape"][1:]))
            self.output_shape = (None, *map(int, out["shape"][1:]))
        elif fmt == ONNX:
            try:
                import onnxruntime as ort
            except ImportError as e:
                raise ExportedError(f"{path}: running an ONNX model needs onnxruntime ({e}). "
                                    "Fix: pip install onnxruntime.") from None
            self._m = ort.InferenceSession(str(path), providers=ort.get_available_providers())
            inp, out = self._m.get_inputs()[0], self._m.get_outputs()[0]
            self._in = inp.name
            self.input_shape = (None, *inp.shape[1:])
            self.output_shape = (None, *out.shape[1:])
        else:
            raise ExportedError(f"unknown export format {fmt!r}; allowed: saved_model, tflite, onnx.")

    def predict_on_batch(self, x) -> np.ndarray:
        """One batch through the exported model (blocks until done); float32 ``(N, outputs)``."""
        x = np.asarray(x, dtype=np.float32)
        if self.fmt == SAVED_MODEL:
            return np.asarray(self._m.serve(x))
        if self.fmt == ONNX:
            return np.asarray(self._m.run(None, {self._in: x})[0])
        if self._batch != len(x):  # TFLite has a fixed batch: resize once per batch size
            self._m.resize_tensor_input(self._in, list(x.shape), strict=False)
            self._m.allocate_tensors()
            self._batch = len(x)
        self._m.set_tensor(self._in, x)
        self._m.invoke()
        return np.array(self._m.get_tensor(self._out))

    def predict(self, x, verbose=0, batch_size: int = 32) -> np.ndarray:
        """Keras-style: ``x`` in batches of ``batch_size``, outputs concatenated."""
        x = np.asarray(x, dtype=np.float32)
        return np.concatenate([self.predict_on_batch(x[i:i + batch_size])
                               for i in range(0, len(x), batch_size)]) if len(x) else np.zeros(
            (0, *self.output_shape[1:]), np.float32)


def _tflite_interpreter(path):
    """LiteRT's interpreter where installed (``ai-edge-litert``), else TF's ``tf.lite.Interpreter``
    (deprecated in favour of LiteRT but still in TF 2.21), on every core."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated"
        m = Interpreter(model_path=str(path), num_threads=threads)
    m.allocate_tensors()
    return m


def find(path) -> tuple[Path, str]:
    """The model file/folder and its format, from a file or an export folder.

    Raises:
        ExportedError: nothing exported there, or several models (names them).
    """
    p = Path(path)
    if not p.exists():
        raise ExportedError(f"--model {path}: no such file or folder.")
    if p.is_file():
        fmt = {".tflite": TFLITE, ".onnx": ONNX}.get(p.suffix.lower())
        if fmt is None:
            raise ExportedError(f"--model {path}: not a .tflite or .onnx file, nor a SavedModel "
                                "folder. Fix: pass the folder `transferlab export --out` wrote.")
        return p, fmt
    if (p / "saved_model.pb").is_file():
        return p, SAVED_MODEL
    found = sorted([*(q.parent for q in p.glob("*/saved_model.pb")), *p.glob("*.tflite"), *p.glob("*.onnx")])
    if len(found) != 1:
        what = ", ".join(str(f.relative_to(p)) for f in found) or "none"
        raise ExportedError(f"--model {path}: expected one exported model in the folder, found {what}. "
                            "Fix: pass the model file (or SavedModel folder) itself.")
    return find(found[0])


def load(path) -> tuple[Exported, list[str], dict]:
    """An exported model, its class names and its ``export.json`` (``{}`` if none).

    ``classes.json`` is looked for beside the model file, in a SavedModel
    folder, or in the folder above it.

    Raises:
        ExportedError: no model, no ``classes.json``, or classes that do not
            fit the model's outputs.
    """
    model_path, fmt = find(path)
    model = Exported(model_path, fmt)
    base = model_path if model_path.is_dir() else model_path.parent
    candidates = [base / "classes.json", base.parent / "classes.json"]
    classes = next((c for c in candidates if c.is_file()), None)
    if classes is None:
        raise ExportedError(f"{model_path}: no classes.json beside it (looked in {base} and "
                            f"{base.parent}). Fix: export with `transferlab export`, which writes it, "
                            "or write the class names as a JSON list there.")
    names = json.loads(classes.read_text())
    meta_file = classes.parent / "export.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    outputs = int(model.output_shape[-1])
    if len(names) != (2 if outputs == 1 else outputs):
        raise ExportedError(f"{classes} lists {len(names)} classes but {model_path} has {outputs} "
                            "outputs. Fix: use the classes.json exported with this model.")
    return model, list(names), meta
