"""Frozen-feature caching: wall time and final metrics with vs without the cache.

    .venv/bin/python benchmarks/feature_cache.py            # MobileNetV2@96 and VGG19@224
    .venv/bin/python benchmarks/feature_cache.py --quick    # MobileNetV2@96 only

freeze=all, 10 epochs, random-init bases (no download here), synthetic images.
For each backbone, in one process: a job with runtime.feature_cache=off, one
with auto on an empty cache (features built), one with auto again (the
cache reused, as by the next job of a sweep). Prints wall time per job, the
fit time (feature extraction included), the ratios, and the final metrics of
each side (they must agree within float tolerance: same seed, same batches).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from _common import compose, load, machine, table

CASES = {  # backbone, px, images per class (70% train, 15% validation, 15% test)
    "mobilenetv2": (96, 150),
    "vgg19": (224, 100),
}


def one(cfg):
    import keras
    import mlflow

    from transferlab.runner import job

    keras.utils.set_random_seed(cfg.seed)  # data.load's shuffle seeds read TF's global seed
    t0 = time.perf_counter()
    out = job.run(cfg)
    wall = time.perf_counter() - t0
    c = mlflow.MlflowClient(f"sqlite:///{cfg.root_dir}/mlruns/mlflow.db")
    r = c.get_run(out["run_id"])
    hist = {m: [h.value for h in sorted(c.get_metric_history(r.info.run_id, m), key=lambda h: h.step)]
            for m in ("val_loss", "epoch_seconds")}
    return {"wall": wall, "fit": out["train_seconds"], "features": r.data.metrics.get("feature_cache_seconds", 0.0),
            "epoch": statistics.median(hist["epoch_seconds"][1:]), "val_loss": hist["val_loss"][-1],
            "test_acc": out["test_acc"], "test_loss": out["test_loss"], "tag": r.data.tags.get("feature_cache", "")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="MobileNetV2@96 only")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    print("machine:", machine())
    rows, metric_rows = [], []
    for name, (px, per_class) in CASES.items():
        if args.quick and name != "mobilenetv2":
            continue
        root = tempfile.mkdtemp(prefix=f"fc_{name}_")
        base = [f"backbone={name}", "backbone.weights=null", f"image_size={px}", "freeze=all",
                f"trainer.epochs={args.epochs}", "runtime.verbose=0", "runtime.isolate=off",
                "tracking.skip_finished=false", f"dataset.images_per_class={per_class}",
                f"dataset.source_size={px}"]
        res = {}
        for side, fc in (("off", "off"), ("cache built", "auto"), ("cache reused", "auto")):
            res[side] = one(compose([*base, f"runtime.feature_cache={fc}"], root))
            print(f"  {name}@{px} {side}: {res[side]} ({load()})", flush=True)
        off, built, reused = res["off"], res["cache built"], res["cache reused"]
        e100_off = 100 * off["epoch"]
        e100_on = built["features"] + 100 * built["epoch"]
        rows.append([f"{name}@{px}", f"{off['wall']:.0f} s / {off['fit']:.0f} s",
                     f"{built['wall']:.0f} s / {built['fit']:.1f} s", f"{reused['wall']:.0f} s / {reused['fit']:.1f} s",
                     f"{off['fit'] / built['fit']:.1f}x", f"{off['fit'] / reused['fit']:.0f}x",
                     f"{off['wall'] / built['wall']:.1f}x",
                     f"{e100_off / e100_on:.0f}x"])
        for side, r in res.items():
            metric_rows.append([f"{name}@{px}", side, f"{r['test_acc']:.4f}", f"{r['test_loss']:.6f}",
                                f"{r['val_loss']:.6f}"])
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nfreeze=all, {args.epochs} epochs, batch 32, random init; job wall / fit time (fit includes "
          "building or loading the features); 100-epoch ratio extrapolated from the measured "
          "per-epoch times and the feature time")
    print(table(["model", "off", "auto, cache built", "auto, cache reused", "fit ratio (built)",
                 "fit ratio (reused)", "job wall ratio (built)", "fit ratio at 100 epochs"], rows))
    print("\nfinal metrics (same seed; must agree within float tolerance)")
    print(table(["model", "side", "test_acc", "test_loss", "last val_loss"], metric_rows))
    print("end:", load())


if __name__ == "__main__":
    main()
