"""Per-epoch wall time: a transferlab job vs the same model.fit written by hand.

    .venv/bin/python benchmarks/framework_vs_keras.py [--epochs 5] [--reps 2]

Same data (synthetic PNG folder, 150 images per class at 96 px: 210 train,
44 validation), same model (MobileNetV2@96, random init, Flatten -> Dense(1)),
batch 32, RMSprop, same epochs. The plain script is what a user writes:
image_dataset_from_directory + cache + prefetch, base(training=False),
model.fit(train, validation_data=val). transferlab runs a whole job
(runtime.feature_cache=off, so both compute the same thing; MLflow logging,
per-epoch backups included). Per-epoch time = the time between the ends of
consecutive epochs (training, validation and, for the framework, its
per-epoch MLflow logging and backup), median over epochs 2..N (epoch 1
holds the graph tracing); the two sides alternate in this process, best of
--reps. The last column is the
framework with its default runtime.feature_cache=auto, for reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import compose, load, machine, table
from _plain import user_classifier

SIZE, PER_CLASS, BS, LR = 96, 150, 32, 1e-4


def plain(folder: Path, freeze: str, epochs: int) -> float:
    import keras

    keras.backend.clear_session()
    kw = dict(image_size=(SIZE, SIZE), batch_size=BS, label_mode="binary", verbose=False)
    train = keras.utils.image_dataset_from_directory(str(folder / "train"), shuffle=True, seed=42, **kw)
    val = keras.utils.image_dataset_from_directory(str(folder / "validation"), shuffle=False, **kw)
    import tensorflow as tf

    train, val = train.cache().prefetch(tf.data.AUTOTUNE), val.cache().prefetch(tf.data.AUTOTUNE)
    model = user_classifier(SIZE, freeze, LR)
    ends = []

    class T(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    model.fit(train, validation_data=val, epochs=epochs, callbacks=[T()], verbose=0)
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


def framework(root: Path, freeze: str, epochs: int, feature_cache: str) -> float:
    import keras
    import mlflow

    from transferlab.runner import job

    cfg = compose(["backbone=mobilenetv2", "backbone.weights=null", f"image_size={SIZE}",
                   f"freeze={freeze}", f"trainer.epochs={epochs}", f"trainer.batch_size={BS}",
                   f"lr={LR}", "runtime.verbose=0", "runtime.isolate=off", "tracking.skip_finished=false",
                   f"dataset.images_per_class={PER_CLASS}", f"dataset.source_size={SIZE}",
                   f"runtime.feature_cache={feature_cache}"], root)
    keras.utils.set_random_seed(42)
    out = job.run(cfg)
    c = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    # The time between the ends of consecutive epochs (MLflow timestamps of `loss`, logged at
    # each epoch's end): training, validation, logging, the per-epoch backup, everything.
    ends = [h.timestamp / 1000 for h in sorted(c.get_metric_history(out["run_id"], "loss"), key=lambda h: h.step)]
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print("machine:", machine())
    root = Path(tempfile.mkdtemp(prefix="fw_"))
    from transferlab.data import synthetic

    folder = synthetic.generate(root / "data", 2, PER_CLASS, SIZE, 0)
    rows = []
    for freeze in ("all", "last4"):
        p, f, a = [], [], []
        for _ in range(args.reps):
            p.append(plain(folder, freeze, args.epochs))
            f.append(framework(root, freeze, args.epochs, "off"))
            print(f"  freeze={freeze}: plain {p[-1]:.2f} s/epoch, transferlab {f[-1]:.2f} s/epoch ({load()})",
                  flush=True)
        a.append(framework(root, freeze, args.epochs, "auto"))
        rows.append([f"freeze={freeze}", f"{min(p):.2f}", f"{min(f):.2f}", f"{min(f) / min(p):.3f}",
                     f"{a[-1]:.3f}"])
    print(f"\nMobileNetV2@{SIZE}, {2 * PER_CLASS} images, batch {BS}, {args.epochs} epochs; "
          f"seconds per epoch (train + validation + callbacks), median over epochs 2..{args.epochs}, best of {args.reps}")
    print(table(["strategy", "plain Keras", "transferlab (feature_cache=off)", "ratio",
                 "transferlab default (auto)"], rows))
    print("end:", load())


if __name__ == "__main__":
    main()
