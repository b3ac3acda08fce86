"""Images/s with and without runtime.precision=mixed_float16 and runtime.jit_compile.

    .venv/bin/python benchmarks/gpu_switches.py            # on a machine with a GPU, in one go
    .venv/bin/python benchmarks/gpu_switches.py --smoke    # anywhere: tiny, checks it runs

Needs the CUDA build of TensorFlow (pip install "tensorflow[and-cuda]==2.21.*").
For each backbone at 224 px, full fine-tuning (freeze=none) and transfer
learning without the feature cache (freeze=all), batch 64, random data held
on the device: the model is built and compiled by transferlab itself
(model.build_model / compile_model, i.e. the switches as a job applies
them), the step is traced, then --steps timed steps. Four settings per
model: float32 / mixed_float16 x jit off / on. Prints images/s and the
ratio to float32 without XLA. On a machine without a GPU the switches are
skipped (the tags of a job say so) and only the baseline is measured.
"""

from __future__ import annotations

import argparse
import time

from _common import compose, load, machine, table

BACKBONES = ["mobilenetv2", "resnet50", "efficientnetb0", "vgg19", "convnexttiny"]
SETTINGS = [("float32", False), ("float32", True), ("mixed_float16", False), ("mixed_float16", True)]


def images_per_s(name: str, freeze: str, precision: str, jit: bool, size: int, bs: int, steps: int):
    import keras
    import tensorflow as tf

    from transferlab.models.build import build_model, speed_switches
    from transferlab.engine.train import prebuild

    keras.backend.clear_session()
    cfg = compose([f"backbone={name}", "backbone.weights=null", f"image_size={size}", f"freeze={freeze}",
                   f"runtime.precision={precision}", f"runtime.jit_compile={str(jit).lower()}",
                   "optimizer=adam"], "/tmp")
    sw = speed_switches(cfg)
    model, _, _ = build_model(cfg, 10)
    x = tf.random.uniform((bs, size, size, 3), 0, 255)
    y = tf.one_hot(tf.random.uniform((bs,), 0, 10, dtype=tf.int32), 10)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    prebuild(model, ds)
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace + warm-up
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    return bs * steps / dt, sw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one backbone: checks the script runs")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    args = ap.parse_args()
    import tensorflow as tf

    print("machine:", machine())
    gpu = bool(tf.config.list_physical_devices("GPU"))
    names = args.backbones.split(",")
    size, bs, steps = args.size, args.batch, args.steps
    if args.smoke:
        names, size, bs, steps = names[:1], 32, 8, 2
    settings = SETTINGS if gpu else SETTINGS[:1]
    if not gpu:
        print("no GPU: mixed_float16 and jit_compile are skipped on CPU (a job tags them so); "
              "measuring the float32 baseline only")
    rows = []
    for name in names:
        for freeze in ("none", "all"):
            base_ips = None
            for precision, jit in settings:
                ips, sw = images_per_s(name, freeze, precision, jit, size, bs, steps)
                base_ips = base_ips or ips
                rows.append([f"{name}@{size}", freeze, precision, "on" if jit else "off",
                             f"{ips:.0f}", f"{ips / base_ips:.2f}", sw.tags["precision"][:40]])
                print("  " + " | ".join(rows[-1]), f"({load()})", flush=True)
    print(f"\nbatch {bs}, {steps} timed steps after tracing, Adam, 10 classes, random init")
    print(table(["model", "freeze", "precision", "jit_compile", "images/s", "vs float32 no-jit",
                 "applied"], rows))
    print("end:", load())


if __name__ == "__main__":
    main()
