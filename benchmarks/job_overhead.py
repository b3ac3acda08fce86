"""Per-job overhead before/after: seconds from job start to the end of the first training step.

    .venv/bin/python benchmarks/job_overhead.py [--reps 1] [--quick]

Each job is a real ``job.run`` (MLflow run, data, build, BatchNorm
calibration, compile, fit) on tiny data (20 synthetic images, batch 8,
1 epoch), in this process, so TensorFlow is imported once, as in a sweep
worker. "before" switches off the two changes of this work: frozen-feature
caching (trainer.feature_cache=off) and the pre-built train step
(train.prebuild replaced by a no-op, so Keras creates its metric and
optimizer variables inside the first trace and tf.function traces the train
step twice). "after" is the default, with an empty feature cache (each
"after" job computes its features; a later job of a sweep would reuse them).
Both sides alternate; best of --reps.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time

from _common import compose, load, machine, table

CASES = [  # backbone, px, freeze
    ("mobilenetv3small", 32, "all"),
    ("mobilenetv3small", 32, "last4"),
    ("mobilenetv3small", 32, "none"),
    ("resnet50", 64, "all"),
    ("resnet50", 64, "last4"),
    ("vgg19", 64, "all"),
    ("vgg19", 64, "last4"),
]


def run_job(root, name, px, freeze, before: bool) -> dict:
    import keras

    from transferlab import job, train

    captured = {}
    real_fit, real_prebuild = train.fit, train.prebuild
    shutil.rmtree(f"{root}/mlruns/feature_cache", ignore_errors=True)  # every job builds its features

    def fit(*a, **k):
        captured["fit"] = real_fit(*a, **k)
        return captured["fit"]

    train.fit = fit
    if before:
        train.prebuild = lambda model, dataset: None
    try:
        cfg = compose([f"backbone={name}", "backbone.weights=null", f"image_size={px}", f"freeze={freeze}",
                       "trainer.epochs=1", "trainer.batch_size=8", "trainer.verbose=0",
                       "trainer.isolate=off", "tracking.skip_finished=false",
                       "dataset.images_per_class=10", f"dataset.source_size={px}",
                       f"trainer.feature_cache={'off' if before else 'auto'}"], root)
        keras.utils.set_random_seed(42)
        t0 = time.perf_counter()
        out = job.run(cfg)
        wall = time.perf_counter() - t0
    finally:
        train.fit, train.prebuild = real_fit, real_prebuild
    r = captured["fit"]
    return {"to_first_step": r.first_step_at - t0, "wall": wall, "data": out["data_seconds"],
            "build": out["build_seconds"], "features": r.feature_seconds,
            "first_step": r.first_step_seconds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="MobileNetV3Small only")
    args = ap.parse_args()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True,
                   env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    tf_import = time.perf_counter() - t0
    print("machine:", machine())
    root = tempfile.mkdtemp(prefix="overhead_")
    run_job(root, "mobilenetv3small", 32, "all", False)  # process warm-up (TF runtime, MLflow store), not measured
    rows = []
    for name, px, freeze in CASES:
        if args.quick and name != "mobilenetv3small":
            continue
        res = {"before": [], "after": []}
        for rep in range(args.reps):
            for side in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                res[side].append(run_job(root, name, px, freeze, side == "before"))
                r = res[side][-1]
                print(f"  {name}@{px} freeze={freeze} {side}: start->first step {r['to_first_step']:.1f} s "
                      f"(data {r['data']:.1f}, build {r['build']:.1f}, features {r['features']:.1f}, "
                      f"first step {r['first_step']:.1f}); job {r['wall']:.1f} s ({load()})", flush=True)
        b = min(res["before"], key=lambda r: r["to_first_step"])
        a = min(res["after"], key=lambda r: r["to_first_step"])
        rows.append([f"{name}@{px}", freeze, f"{b['to_first_step']:.1f}", f"{a['to_first_step']:.1f}",
                     f"{a['to_first_step'] / b['to_first_step']:.2f}",
                     f"{b['first_step']:.1f} -> {a['features'] + a['first_step']:.1f}",
                     f"{min(r['wall'] for r in res['before']):.1f} -> {min(r['wall'] for r in res['after']):.1f}"])
    print(f"\n`import tensorflow` in a fresh process: {tf_import:.1f} s (once per worker process, "
          "not per job: trainer.isolate runs up to trainer.jobs_per_process jobs per worker)")
    print("seconds from job start to the end of the first training step (20 images, batch 8, 1 epoch); "
          f"best of {args.reps}")
    print(table(["model", "freeze", "before", "after", "after/before",
                 "first step (+ features) before -> after", "whole job before -> after"], rows))
    print("end:", load())


if __name__ == "__main__":
    main()
