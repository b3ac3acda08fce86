"""``transferlab export``: a run's trained classifier as SavedModel, TFLite or ONNX, then checked.

The run must have logged its model (``tracking.log_model=true``). Converters:
Keras' own ``model.export`` for ``saved_model`` (format ``tf_saved_model``)
and ``onnx`` (Keras drives tf2onnx), TF's ``TFLiteConverter`` on that
SavedModel for ``tflite``, with ``--quantize float16`` (float16 weights) or
``int8`` (full integer ops, float32 input/output, calibrated on up to 100 of
the run's training images).

The check: the run's test split is reloaded with the project's data layer
from the run's own ``config.yaml`` (and must be the images its
``test_predictions.csv`` lists), and both the Keras model and the export
score it. Float formats must give the same predictions with probabilities
within 1e-4 of the Keras model's (else exit 1); quantized ones state their
accuracy drop. Size and latency (batch 1 and 32, warm) go beside, and all of
it is logged on the run: metrics ``export.<key>.*`` (``key`` = ``tflite_int8``,
``onnx``, ...) and the exported files under the artifact folder ``export/<key>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from transferlab import exported

FORMATS = (exported.SAVED_MODEL, exported.TFLITE, exported.ONNX)
QUANTIZE = ("float16", "int8")
FLOAT_TOLERANCE = 1e-4
REPRESENTATIVE_IMAGES = 100


class ExportError(ValueError):
    """A user-facing error of ``transferlab export``; the message names the value and the fix."""


@dataclass
class Check:
    """What the export check measured (also ``check.json`` and the run's ``export.<key>.*`` metrics)."""

    key: str
    path: str
    test_images: int
    test_acc: float  # the exported model
    keras_test_acc: float  # the Keras model, now, on the same images
    run_test_acc: float | None  # the run's logged test_acc
    acc_drop: float  # keras_test_acc - test_acc
    agreement: float  # share of test images with the same predicted class
    max_prob_diff: float
    run_prob_diff: float | None  # Keras model now vs the run's test_predictions.csv
    size_mb: float
    keras_size_mb: float
    ms_per_image_b1: float
    ms_per_step_b32: float
    keras_ms_per_image_b1: float
    keras_ms_per_step_b32: float
    passed: bool
    note: str


def _scores(out: np.ndarray, y: np.ndarray):
    """(probabilities (N, classes), predicted class) from model outputs, as ``engine.evaluate``."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape[1] == 1:
        return np.concatenate([1.0 - out, out], axis=1), (out[:, 0] > 0.5).astype(int)
    return out, out.argmax(axis=1)


def _test_split(cfg, run, c, tmp: Path, size: int):
    """The run's splits reloaded from its config, and the test probabilities the run logged
    (``test_predictions.csv``; None if absent). Refuses a test split other than the run's."""
    from transferlab import data

    info = data.prepare(cfg).info  # dataset.duplicates=drop: the run's test split without the copies
    path = info.path
    if run.data.tags.get("data_fingerprint") not in (None, info.fingerprint()):
        print(f"[transferlab] note: the data in {path} changed since run {run.info.run_id} "
              "(data_fingerprint differs); checking on its test split as it is now.")
    splits = data.load(info, size, 32, int(cfg.seed))
    try:
        local = c.download_artifacts(run.info.run_id, "test_predictions.csv", str(tmp))
        with open(local, newline="") as f:
            rows = list(csv.DictReader(f))
        logged = [r["path"] for r in rows]
        probs = np.array([[float(r[k]) for k in r if k.startswith("p_")] for r in rows])
    except Exception:  # a run without the file: nothing to compare with
        logged = probs = None
    if logged is not None and logged != splits.test_paths:
        diff = len(set(logged) ^ set(splits.test_paths))
        raise ExportError(
            f"run {run.info.run_id}: the test split in {path} is not the one the run was scored on "
            f"({len(logged)} images in its test_predictions.csv, {len(splits.test_paths)} now, "
            f"{diff} differ). Fix: restore that data folder (dataset.path in the run's config.yaml).")
    return splits, probs


def _convert(model, fmt: str, quantize: str | None, out: Path, splits, tmp: Path) -> tuple[Path, str]:
    """Writes the export; returns its path and a note on what the converter did."""
    if fmt == exported.SAVED_MODEL:
        model.export(str(out / "saved_model"), format="tf_saved_model", verbose=False)
        return out / "saved_model", "Keras model.export(format='tf_saved_model')"
    if fmt == exported.ONNX:
        try:
            import onnxruntime  # noqa: F401  (the check runs it)
            import tf2onnx  # noqa: F401
        except ImportError as e:
            raise ExportError(f"--format onnx needs tf2onnx and onnxruntime ({e}). Fix: pip install "
                              "tf2onnx onnxruntime (both are transferlab dependencies).") from None
        logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # an optimizer pass it skips, logged as a traceback
        path = out / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probes np.object
            model.export(str(path), format="onnx", verbose=False)
        return path, "Keras model.export(format='onnx') (tf2onnx)"
    import tensorflow as tf

    model.export(str(tmp / "sm"), format="tf_saved_model", verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(tmp / "sm"))
    note = "tf.lite.TFLiteConverter (float32)"
    if quantize == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
        note = "tf.lite.TFLiteConverter, float16 weights"
    elif quantize == "int8":
        images = np.concatenate([np.asarray(x) for x, _ in splits.train])[:REPRESENTATIVE_IMAGES]
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([im[None]] for im in images)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        note = f"tf.lite.TFLiteConverter, int8 ops calibrated on {len(images)} training images"
    try:
        blob = conv.convert()
    except Exception as e:
        if quantize != "int8":
            raise
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        blob = conv.convert()  # some op has no int8 kernel: it stays float
        note += f"; ops without an int8 kernel stay float ({type(e).__name__})"
    path = out / (f"model_{quantize}.tflite" if quantize else "model.tflite")
    path.write_bytes(blob)
    return path, note


def export_run(uri: str, run: str, fmt: str, quantize: str | None, out, steps: int = 10,
               repeats: int = 3, log: bool = True) -> Check:
    """Exports run ``run``'s classifier to ``out`` as ``fmt``, checks it and logs the check.

    Args:
        uri: the MLflow store of the run.
        run: a run id or ``latest:<experiment>``.
        fmt: ``saved_model`` | ``tflite`` | ``onnx``; quantize: None, or
            ``float16`` | ``int8`` with ``tflite``.
        out: output folder (created); gets the model, ``classes.json``,
            ``export.json`` and ``check_<key>.json``.
        steps, repeats: latency measurement (timed steps x repetitions).
        log: log metrics and artifacts on the run.

    Raises:
        ExportError: bad format/quantize, no logged model (says to re-run with
            tracking.log_model=true), the run's data is gone or changed.
    """
    import mlflow

    from transferlab.engine import latency
    from transferlab.models import pretrained

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: allowed {', '.join(FORMATS)}.")
    if quantize is not None and (quantize not in QUANTIZE or fmt != exported.TFLITE):
        raise ExportError(f"--quantize {quantize}: allowed {', '.join(QUANTIZE)}, with --format tflite only.")
    try:
        r, loc = pretrained.resolve(pretrained.RUN_PREFIX + run, uri, what=f"--run {run}")
        model = pretrained.load_logged_model(uri, loc)
    except pretrained.PretrainedError as e:
        raise ExportError(f"{e} (export needs the model the job logged)") from None
    run_id, key = r.info.run_id, fmt + (f"_{quantize}" if quantize else "")
    c = mlflow.MlflowClient(uri)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = OmegaConf.load(c.download_artifacts(run_id, "config.yaml", str(tmp)))
        size = int(model.input_shape[1])
        splits, run_probs = _test_split(cfg, r, c, tmp, size)
        label = r.data.tags.get("backbone_label") or r.data.tags.get("backbone", "?")
        print(f"[transferlab] run {run_id}: {label} @{size}px, classes "
              f"{', '.join(splits.class_names)}; test split {splits.counts['test']} images")
        x = np.concatenate([np.asarray(b) for b, _ in splits.test])
        y = np.concatenate([np.asarray(t) for _, t in splits.test])
        # the Keras model first: it is then "called", which Keras' ONNX export requires
        p_keras, pred_keras = _scores(model.predict(x, verbose=0, batch_size=32), y)
        t0 = time.perf_counter()
        path, note = _convert(model, fmt, quantize, out, splits, tmp)
        print(f"[transferlab] exported {key} -> {path} ({time.perf_counter() - t0:.1f} s; {note})")
    true = y[:, 0].astype(int) if y.shape[1] == 1 else y.argmax(axis=1)
    runner = exported.Exported(path, fmt)
    p_exp, pred_exp = _scores(runner.predict(x, batch_size=32), y)
    acc, keras_acc = float(np.mean(pred_exp == true)), float(np.mean(pred_keras == true))
    diff = float(np.abs(p_exp - p_keras).max()) if len(x) else 0.0
    # the Keras model now vs the run's own record (6 decimals): the same model on the same images
    run_diff = (float(np.abs(p_keras - run_probs).max()) if run_probs is not None
                and run_probs.shape == p_keras.shape and len(x) else None)
    agree = float(np.mean(pred_exp == pred_keras)) if len(x) else 1.0
    quantized = quantize is not None
    passed = quantized or (agree == 1.0 and diff <= FLOAT_TOLERANCE)
    batches = {b: latency.random_images(model, b) for b in (1, 32)}
    t_exp = [latency.time_steps(lambda b=b: runner.predict_on_batch(batches[b]), b, steps, repeats)
             for b in (1, 32)]
    fn = latency.step_function(model)
    t_keras = [latency.time_model(model, b, steps, repeats, fn=fn) for b in (1, 32)]
    check = Check(
        key=key, path=str(path), test_images=len(x), test_acc=acc, keras_test_acc=keras_acc,
        run_test_acc=r.data.metrics.get("test_acc"), acc_drop=keras_acc - acc, agreement=agree,
        max_prob_diff=diff, run_prob_diff=run_diff, size_mb=latency.path_size_mb(path), keras_size_mb=latency.weights_size_mb(model),
        ms_per_image_b1=t_exp[0].ms_per_step, ms_per_step_b32=t_exp[1].ms_per_step,
        keras_ms_per_image_b1=t_keras[0].ms_per_step, keras_ms_per_step_b32=t_keras[1].ms_per_step,
        passed=passed, note=note)
    (out / "classes.json").write_text(json.dumps(splits.class_names))
    (out / "export.json").write_text(json.dumps({
        "run_id": run_id, "tracking_uri": uri, "backbone": r.data.tags.get("backbone"),
        # with its constructor options (mobilenet-a0.25): the model's graph has them built in
        "backbone_label": label, "image_size": size,
        "format": fmt, "quantize": quantize, "model": path.name, "input": "float32 (N, H, W, 3) RGB 0-255",
        "output": "sigmoid (N, 1)" if y.shape[1] == 1 else f"softmax (N, {y.shape[1]})"}, indent=2))
    (out / f"check_{key}.json").write_text(json.dumps(asdict(check), indent=2))
    if log:
        _log(c, run_id, check, out, path)
    return check


def _log(c, run_id: str, check: Check, out: Path, path: Path) -> None:
    """Metrics ``export.<key>.*`` and the export under ``export/<key>/`` on the run."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    names = ("test_acc", "keras_test_acc", "acc_drop", "agreement", "max_prob_diff", "size_mb",
             "ms_per_image_b1", "ms_per_step_b32", "passed")
    c.log_batch(run_id, metrics=[Metric(f"export.{check.key}.{n}", float(getattr(check, n)), now, 0)
                                 for n in names])
    dest = f"export/{check.key}"
    if path.is_dir():
        c.log_artifacts(run_id, str(path), f"{dest}/{path.name}")
    else:
        c.log_artifact(run_id, str(path), dest)
    for f in ("classes.json", "export.json", f"check_{check.key}.json"):
        c.log_artifact(run_id, str(out / f), dest)


def report(check: Check) -> str:
    """The check as printed lines (accuracy, agreement, size, latency, verdict)."""
    run_acc = "-" if check.run_test_acc is None else f"{check.run_test_acc:.4f}"
    if check.key.rsplit("_", 1)[-1] in QUANTIZE:
        verdict = f"quantized: accuracy drop {check.acc_drop:+.4f} (Keras model - exported)"
    elif check.passed:
        verdict = f"PASSED: same predictions, probabilities within {FLOAT_TOLERANCE:g}"
    else:
        verdict = f"FAILED: predictions differ or probabilities beyond {FLOAT_TOLERANCE:g}"
    return "\n".join([
        f"test_acc     exported {check.test_acc:.4f} | Keras model {check.keras_test_acc:.4f} | "
        f"run's test_acc {run_acc}  ({check.test_images} test images)",
        f"agreement    {100 * check.agreement:.1f}% same class as the Keras model; max |probability diff| "
        f"{check.max_prob_diff:.2e}" + ("" if check.run_prob_diff is None else
                                      f" (Keras model vs the run's test_predictions.csv: {check.run_prob_diff:.1e})"),
        f"size         {check.size_mb:.2f} MB (Keras weights {check.keras_size_mb:.2f} MB)",
        f"latency      {check.ms_per_image_b1:.2f} ms/image at batch 1, {check.ms_per_step_b32:.1f} ms/step "
        f"at batch 32 (Keras: {check.keras_ms_per_image_b1:.2f} / {check.keras_ms_per_step_b32:.1f})",
        f"check        {verdict}"])


def main(args, uri: str) -> int:
    """``transferlab export`` with parsed arguments; returns the exit status."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check = export_run(uri, args.run, args.format, args.quantize, args.out, args.batches, args.repeats)
    print(report(check))
    print(f"logged on run: metrics export.{check.key}.*, artifacts export/{check.key}/")
    return 0 if check.passed else 1
