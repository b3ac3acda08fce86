"""Inference time and size of a Keras model on this machine, measured as Keras measures it.

Keras' applications table gives "Time (ms) per inference step": batch 32,
"the average of 30 batches and 10 repetitions". ``time_steps`` does that for
any callable: warm-up steps first (tracing, memory allocation, caches), then
``repeats`` repetitions of ``steps`` timed steps on one fixed batch; a
repetition's figure is its mean ms per step, and the result is the mean over
repetitions (their standard deviation and minimum beside it). A Keras model
runs as one traced ``model(x, training=False)`` (``step_function``: as fast as
``predict_on_batch``, without its retrace per batch size, and without the
per-call data-adapter overhead ``predict`` has). Inputs are uniform 0-255 pixels, as a transferlab model or
a Keras application after ``preprocess_input`` takes them; the time does not
depend on the values.

Plain Keras, no MLflow: the runner logs what ``inference_metrics`` returns.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Timing:
    """Measured inference time of one batch size.

    Attributes:
        batch: images per step.
        steps, repeats, warmup: how it was measured (timed steps per
            repetition, repetitions, untimed steps before).
        ms_per_step: mean over repetitions of a repetition's mean ms per step.
        ms_std: standard deviation of the repetitions' means (0 for one).
        ms_min: the fastest repetition's mean ms per step.
    """

    batch: int
    steps: int
    repeats: int
    warmup: int
    ms_per_step: float
    ms_std: float
    ms_min: float

    @property
    def ms_per_image(self) -> float:
        return self.ms_per_step / self.batch

    @property
    def images_per_s(self) -> float:
        return 1000.0 * self.batch / self.ms_per_step


def time_steps(step, batch: int, steps: int = 30, repeats: int = 10, warmup: int = 1) -> Timing:
    """Times ``step()`` (one inference step of ``batch`` images) as Keras' table does.

    Args:
        step: a callable running one step; it must block until the result
            is computed (``predict_on_batch`` and the exported runtimes do).
        batch: images per step (for the per-image figures only).
        steps: timed steps per repetition (Keras: 30), >= 1.
        repeats: repetitions (Keras: 10), >= 1.
        warmup: untimed steps first, >= 0 (1 traces and allocates).

    Raises:
        ValueError: ``steps`` or ``repeats`` < 1, ``warmup`` < 0 (names the value).
    """
    import numpy as np

    for name, value, low in (("steps", steps, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if int(value) < low:
            raise ValueError(f"time_steps: {name} must be >= {low}, got {value}.")
    for _ in range(warmup):
        step()
    means = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        means.append((time.perf_counter() - t0) * 1000.0 / steps)
    m = np.asarray(means)
    return Timing(batch, steps, repeats, warmup, float(m.mean()), float(m.std()), float(m.min()))


def random_images(model_or_shape, batch: int, seed: int = 0):
    """A float32 batch ``(batch, H, W, 3)`` of uniform 0-255 pixels at the model's input size.

    Raises:
        ValueError: the model's input size is not fixed (``None`` height/width).
    """
    import numpy as np

    shape = tuple(getattr(model_or_shape, "input_shape", model_or_shape))[1:]
    if any(d is None for d in shape):
        raise ValueError(f"the model's input shape {shape} is not fixed; build it with a fixed "
                         "input size (e.g. input_shape=(224, 224, 3)) to time it.")
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype("float32")


def step_function(model):
    """``model(x, training=False)`` as one traced function for any batch size.

    Keras' ``predict_on_batch`` retraces the model for each new batch size
    (about 1.5 s for MobileNetV3Small on 2 cores, more for larger models);
    this traces once with the batch dimension left open, and times the same
    as ``predict_on_batch`` (within 5 %).
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def time_model(model, batch: int = 32, steps: int = 30, repeats: int = 10, warmup: int = 1,
               fn=None) -> Timing:
    """Inference time of a Keras model at ``batch`` images per step.

    Args:
        fn: ``step_function(model)`` to reuse across batch sizes (one trace);
            None traces a new one.
    """
    import tensorflow as tf

    fn = fn or step_function(model)
    x = tf.constant(random_images(model, batch))
    return time_steps(lambda: fn(x).numpy(), batch, steps, repeats, warmup)


def path_size_mb(path) -> float:
    """Size of a file, or of every file under a folder, in MiB (2**20 bytes)."""
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def weights_size_mb(model) -> float:
    """The model's weights file (``.weights.h5``, float32 as trained) in MiB.

    What Keras' "Size (MB)" column measures: the download of the weights.
    The file is written to a temporary folder and removed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "m.weights.h5")
        model.save_weights(f)
        return path_size_mb(f)


def inference_metrics(model, repeats: int = 3, steps: int = 5) -> dict[str, float]:
    """What a job logs about its trained classifier's deployment cost, measured warm.

    Returns:
        ``infer_ms_per_image_b1`` (ms per step of one image: latency),
        ``infer_ms_per_step_b32`` (ms per step of 32 images, Keras' table's
        unit) and ``model_size_mb`` (weights file, MiB).
    """
    fn = step_function(model)
    b1 = time_model(model, 1, steps, repeats, fn=fn)
    b32 = time_model(model, 32, steps, repeats, fn=fn)
    return {"infer_ms_per_image_b1": b1.ms_per_step, "infer_ms_per_step_b32": b32.ms_per_step,
            "model_size_mb": weights_size_mb(model)}


_MEASURED: dict[str, tuple[dict, str]] = {}  # architecture key -> (metrics, when measured)


def architecture_key(model, repeats: int, steps: int) -> str:
    """What inference time depends on: the layer graph and its configs, not weight values or
    ``trainable`` flags (freeze=all and last4 classifiers of one backbone time the same)."""
    import hashlib
    import json

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in ("trainable", "name")}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    cfg = json.dumps(strip(model.get_config()), sort_keys=True, default=str)
    return hashlib.sha256(f"{cfg}|{repeats}|{steps}".encode()).hexdigest()


def inference_metrics_once(model, repeats: int = 3, steps: int = 5) -> tuple[dict[str, float], str]:
    """``inference_metrics``, measured once per architecture in this process.

    The jobs of a sweep that differ only in freezing or learning rate train
    classifiers of one architecture, whose inference time on this machine is
    the same (weight values and ``trainable`` flags do not enter a forward
    pass's cost); measuring it again cost each such job 3-6 s (a trace of the
    full model, 30 timed steps, the weights written to disk) and only added
    noise. Later jobs in the same worker process get the first measurement.

    Returns:
        ``(metrics, how)``: ``how`` says whether it was measured now or when.
    """
    try:
        key = architecture_key(model, repeats, steps)
    except Exception:  # a layer without a serialisable config: measure every time
        key = None
    if key in _MEASURED:
        metrics, when = _MEASURED[key]
        return dict(metrics), f"reused: same architecture measured at {when} in this process (pid {os.getpid()})"
    metrics = inference_metrics(model, repeats, steps)
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    if key is not None:
        _MEASURED[key] = (dict(metrics), when)
    return metrics, "measured"


def device() -> tuple[str, str]:
    """``("GPU", <name>)`` when TensorFlow sees a GPU (Keras runs there), else ``("CPU", <name>)``.

    The CPU name is ``/proc/cpuinfo``'s model name and the cores this
    process may use, e.g. ``"Intel(R) Xeon(R) ... (2 cores)"``.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        try:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
        except Exception:  # details are best-effort
            name = gpus[0].name
        return "GPU", f"{name}" + (f" (x{len(gpus)}, timed on the first)" if len(gpus) > 1 else "")
    return "CPU", cpu_name()


def cpu_name() -> str:
    """``/proc/cpuinfo``'s model name and the cores this process may use (``"... (2 cores)"``)."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores)"
