"""``transferlab bench``: the Keras applications table, measured on this machine.

For each backbone the full application is built as Keras' table counts it
(``include_top=True``, 1000 classes, ``weights=None``: no download, and
random weights time the same), at the backbone's own input size or
``--image-size``. Measured here: Size (MB) of its weights file, Parameters,
Depth (layers with parameters, Keras' definition), Time (ms) per inference
step of ``--batch`` images (Keras' method: warm-up, then the mean of
``--repeats`` repetitions of ``--batches`` steps; Keras used 32, 30 and 10)
on the GPU when TensorFlow sees one, else the CPU, and images/s. Beside them
Keras' published figures (``models/published.py``) and the ratio of the
measured time to Keras' own for that device. Parameters and depth must
equal the published ones at the default input size; a mismatch is marked.

Output: the table on stdout, ``bench.csv`` and ``bench.md`` under ``--out``.
"""

from __future__ import annotations

import csv
import gc
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transferlab.models import options, published
from transferlab.models import registry as backbones


class BenchError(ValueError):
    """A user-facing error of ``transferlab bench``; the message names the value and the fix."""


@dataclass
class Row:
    """One backbone measured. ``keras_*`` are Keras' published figures (None: not published)."""

    model: str
    backbone: str
    image_size: int
    device: str  # "CPU" | "GPU"
    size_mb: float
    params: int
    depth: int
    batch: int
    ms_per_step: float
    ms_std: float
    images_per_s: float
    keras_size_mb: float | None
    keras_params_m: float | None
    keras_depth: int | None
    keras_top1: float | None
    keras_top5: float | None
    keras_ms: float | None  # the published time for this device; None unless batch 32 at the default size
    ratio: float | None  # ms_per_step / keras_ms
    params_match: bool | None  # params rounded to 0.1M == the published figure
    depth_match: bool | None


def parse_backbones(text: str) -> list[str]:
    """``"vgg19,resnet50"`` -> names; ``all`` -> the whole registry; ``lecture`` -> the lecture's 17.

    Raises:
        BenchError: an unknown name (with the allowed ones) or an empty list.
    """
    if text.strip() == "all":
        return list(backbones.BACKBONES)
    if text.strip() == "lecture":
        return list(published.LECTURE)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise BenchError("--backbones is empty. Fix: e.g. --backbones vgg19,resnet50,mobilenetv2, "
                         "'lecture' (the lecture's 17) or 'all'.")
    unknown = [n for n in names if n not in backbones.BACKBONES]
    if unknown:
        raise BenchError(f"--backbones: unknown {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(backbones.BACKBONES)}, or 'lecture' / 'all'.")
    return list(dict.fromkeys(names))


def depth(model) -> int:
    """Keras' Depth: the number of layers with parameters (weights, trainable or not)."""
    return sum(1 for layer in model.layers if layer.weights)


def build_application(name: str, image_size: int | None = None, opts: dict | None = None):
    """The full Keras application ``name`` with its 1000-class top, random weights, built
    with Keras' constructor options ``opts`` (``{"alpha": 0.25}``; default Keras' own).

    Raises:
        BenchError: ``image_size`` below the backbone's minimum, an option it does not
            take, or a size Keras refuses.
    """
    import keras

    s = backbones.spec(name)
    size = image_size or s.default_size
    if size < s.min_size:
        raise BenchError(f"--image-size {size} is below {name}'s minimum of {s.min_size} px. "
                         f"Fix: --image-size {s.min_size} or more (default {s.default_size}).")
    try:
        opts = options.resolve(name, opts)
    except options.OptionError as e:
        raise BenchError(str(e).replace("backbone.", "--").replace("_", "-")) from None
    try:
        return getattr(keras.applications, s.constructor)(
            include_top=True, weights=None, classes=1000, input_shape=(size, size, 3), **opts)
    except ValueError as e:
        raise BenchError(f"{name} at {size} px with its top: Keras refuses ({e}). Fix: its own "
                         f"size, --image-size {s.default_size}.") from None


def measure(name: str, batch: int = 32, image_size: int | None = None, steps: int = 30,
            repeats: int = 10, warmup: int = 1, opts: dict | None = None) -> Row:
    """Builds ``name`` with its top and measures one row (see the module docstring). Keras
    publishes figures for its default options only: with others, none are compared."""
    import keras

    from transferlab.engine import latency

    model = build_application(name, image_size, opts)
    label = options.label(name, opts)
    try:
        size = int(model.input_shape[1])
        kind, _ = latency.device()
        t = latency.time_model(model, batch, steps, repeats, warmup)
        params = int(model.count_params())
        row_depth = depth(model)
        size_mb = latency.weights_size_mb(model)
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()
    pub = published.get(name) if label == name else None  # Keras' table: default options only
    keras_ms = None if pub is None else (pub.gpu_ms if kind == "GPU" else pub.cpu_ms)
    if batch != published.BATCH or size != backbones.spec(name).default_size:
        keras_ms = None  # Keras timed batch 32 at the default size: no like-for-like ratio
    opts = options.resolve(name, opts)
    args = ", ".join(f"{k}={v}" for k, v in opts.items() if v != options.takes(name)[k])
    return Row(
        model=backbones.spec(name).constructor + (f"({args})" if args else ""), backbone=label,
        image_size=size, device=kind,
        size_mb=size_mb, params=params, depth=row_depth, batch=batch,
        ms_per_step=t.ms_per_step, ms_std=t.ms_std, images_per_s=t.images_per_s,
        keras_size_mb=pub and pub.size_mb, keras_params_m=pub and pub.params_m,
        keras_depth=pub and pub.depth, keras_top1=pub and pub.top1, keras_top5=pub and pub.top5,
        keras_ms=keras_ms, ratio=(t.ms_per_step / keras_ms) if keras_ms else None,
        params_match=None if pub is None else published.params_label(params) == f"{pub.params_m:.1f}M",
        depth_match=None if pub is None or pub.depth is None else row_depth == pub.depth)


def _weight(name: str) -> float:
    """A backbone's expected share of the run time, for the ETA (Keras' CPU ms, else params)."""
    pub = published.get(name)
    if pub and pub.cpu_ms:
        return pub.cpu_ms
    return 2.0 * pub.params_m if pub else 30.0


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run(names: list[str], batch: int = 32, image_size: int | None = None, steps: int = 30,
        repeats: int = 10, warmup: int = 1, progress: bool = True,
        opts: dict | None = None) -> list[Row]:
    """Measures every backbone in turn; a progress line per backbone on stderr (count, elapsed, ETA).

    The ETA weighs what is left by Keras' published CPU time per backbone
    (parameters where none is published) against the time taken so far.
    """
    rows, t0 = [], time.perf_counter()
    total = sum(_weight(n) for n in names)
    done = 0.0
    for i, name in enumerate(names, 1):
        if progress:
            elapsed = time.perf_counter() - t0
            eta = f", ETA {_clock(elapsed / done * (total - done))}" if done else ""
            bar = "#" * int(20 * done / total)
            print(f"[bench] [{bar:<20}] {i}/{len(names)} {name}  (elapsed {_clock(elapsed)}{eta})",
                  file=sys.stderr, flush=True)
        rows.append(measure(name, batch, image_size, steps, repeats, warmup, opts))
        done += _weight(name)
    if progress:
        print(f"[bench] [{'#' * 20}] {len(names)}/{len(names)} done in "
              f"{_clock(time.perf_counter() - t0)}", file=sys.stderr, flush=True)
    return rows


def _fmt(v, spec: str = "", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def markdown(rows: list[Row], how: str, where: str) -> str:
    """The lecture's table for this machine, with Keras' figures and the ratio beside it."""
    kind = rows[0].device if rows else "CPU"
    head = (f"| Model | px | Size (MB) | Parameters | Depth | Time (ms) per inference step ({kind}) "
            f"| images/s | Keras {kind} ms | x Keras | Keras top-1 | Keras top-5 |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = "" if r.params_match in (True, None) and r.depth_match in (True, None) else " (!)"
        lines.append(
            f"| {r.model}{mark} | {r.image_size} | {r.size_mb:.0f} | {published.params_label(r.params)} "
            f"| {r.depth} | {r.ms_per_step:.1f} | {r.images_per_s:.1f} | {_fmt(r.keras_ms, '.1f')} "
            f"| {_fmt(r.ratio, '.1f')} | {_fmt(r.keras_top1, '.1f')}% | {_fmt(r.keras_top5, '.1f')}% |"
            .replace("| -% ", "| - "))
    bad = [r.model for r in rows if r.params_match is False or r.depth_match is False]
    notes = [f"Measured on {where}; {how}.",
             f"Keras' figures: {published.SOURCE} ({published.CONDITIONS}); x Keras = measured "
             "time / Keras' time (only at batch 32 and the default input size, as Keras timed); top-1/top-5 are Keras' ImageNet figures (not measured here).",
             "Size: the float32 weights file (.weights.h5) in MiB; Depth: layers with parameters."]
    if bad:
        notes.append(f"(!) parameters or depth differ from Keras' table: {', '.join(bad)} "
                     "(expected at a non-default --image-size for models with a Flatten top, VGG).")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write(rows: list[Row], out, how: str, where: str) -> dict[str, Path]:
    """``bench.csv`` (every field of every row) and ``bench.md`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "bench.csv", "md": out / "bench.md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    paths["md"].write_text(markdown(rows, how, where))
    return paths


def main(args) -> int:
    """``transferlab bench`` with parsed arguments; returns the exit status."""
    from transferlab.engine import latency

    names = parse_backbones(args.backbones)
    for flag in ("batch", "batches", "repeats"):
        if getattr(args, flag) < 1:
            raise BenchError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    if args.image_size is not None:  # every size checked before the first (slow) model
        for n in names:
            if args.image_size < backbones.spec(n).min_size:
                raise BenchError(f"--image-size {args.image_size} is below {n}'s minimum of "
                                 f"{backbones.spec(n).min_size} px. Fix: --image-size "
                                 f"{backbones.spec(n).min_size} or more.")
    opts = {k: v for k in options.KEYS if (v := getattr(args, k, None)) is not None}
    for n in names:  # every option checked before the first (slow) model
        try:
            options.resolve(n, opts)
        except options.OptionError as e:
            raise BenchError(str(e).replace("backbone.", "--").replace("_", "-")) from None
    kind, where = latency.device()
    how = (f"batch {args.batch}, {args.warmup} warm-up step(s), then the mean of {args.repeats} "
           f"repetition(s) of {args.batches} step(s); include_top=True, weights=None, "
           + (f"{args.image_size} px" if args.image_size else "each backbone's own input size")
           + "".join(f", {k}={v}" for k, v in opts.items()))
    print(f"[bench] {len(names)} backbone(s) on {kind}: {where}; {how}", file=sys.stderr)
    rows = run(names, args.batch, args.image_size, args.batches, args.repeats, args.warmup, opts=opts)
    paths = write(rows, args.out, how, f"{kind}: {where}")
    print(markdown(rows, how, f"{kind}: {where}"))
    print(f"CSV:      {paths['csv']}\nMarkdown: {paths['md']}")
    return 0
