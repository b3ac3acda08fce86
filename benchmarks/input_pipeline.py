"""The input pipeline vs the lecture's ImageDataGenerator.flow_from_directory.

    .venv/bin/python benchmarks/input_pipeline.py [--images 400] [--size 224] [--epochs 3]

Same JPEG folder (2 classes, 400x300 px JPEGs written here), same target
size, batch 32, the lecture's augmentation (rotation 40, shifts 0.2, shear
0.2, zoom 0.2, horizontal flip) in both: ImageDataGenerator decodes and
augments image by image in Python every epoch; transferlab decodes once
(data.load: tf.data, parallel map, in-memory cache, prefetch) and augments
whole batches with the layer the model uses (transferlab.models.layers.RandomAffine:
ImageDataGenerator's matrix, one resampling per image). Also measured, for
reference: transferlab's previous augmentation (RandomRotation,
RandomTranslation, RandomShear, RandomZoom, RandomFlip: four resamplings)
and the pipeline without augmentation. Images/s delivered per epoch, all in this process,
alternated, best of the epochs after the first (the first includes
transferlab's one decode).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import compose, load, machine, table


def write_jpegs(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    from transferlab.data import synthetic

    src = synthetic.generate(root / "png", 2, max(3, n // 2), 128, 0)
    out = root / "jpeg"
    for split in ("train", "validation", "test"):
        for p in sorted((src / split).rglob("*.png")):
            dst = out / split / p.parent.name / (p.stem + ".jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            img = Image.open(p).convert("RGB").resize((400, 300))
            arr = np.asarray(img).astype("float32")
            arr += np.random.default_rng(len(p.stem)).normal(0, 8, arr.shape)  # photo-like noise
            Image.fromarray(arr.clip(0, 255).astype("uint8")).save(dst, quality=90)
    return out


def five_layers(aug_cfg, seed: int):
    """transferlab's previous augmentation, for reference: five Keras layers, four resamplings."""
    import math

    import keras

    L, z = keras.layers, (-aug_cfg.zoom, aug_cfg.zoom)
    return keras.Sequential([
        L.RandomRotation(aug_cfg.rotation / 360.0, fill_mode="nearest", seed=seed),
        L.RandomTranslation(aug_cfg.height_shift, aug_cfg.width_shift, fill_mode="nearest", seed=seed + 1),
        L.RandomShear(x_factor=math.tan(math.radians(aug_cfg.shear)), fill_mode="nearest", seed=seed + 2),
        L.RandomZoom(z, z, fill_mode="nearest", seed=seed + 3),
        L.RandomFlip("horizontal", seed=seed + 4)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import tensorflow as tf

    from transferlab import data
    from transferlab.models.layers import augmentation

    print("machine:", machine())
    root = Path(tempfile.mkdtemp(prefix="pipe_"))
    folder = write_jpegs(root, args.images)
    cfg = compose(["augment=lecture", "dataset=folder", f"dataset.path={folder}"], root)
    train_dir = folder / "train"
    n = sum(1 for _ in train_dir.rglob("*.jpg"))
    size, bs = args.size, 32

    from tensorflow.keras.preprocessing.image import ImageDataGenerator  # the legacy class

    idg = ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                             shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    flow = idg.flow_from_directory(str(train_dir), target_size=(size, size), batch_size=bs,
                                   class_mode="binary", seed=42)

    aug = augmentation(cfg.augment, cfg.seed)
    augment = tf.function(lambda x: aug(x, training=True))
    t0 = time.perf_counter()
    splits = data.load(data.scan(folder), size, bs, cfg.seed)
    load_s = time.perf_counter() - t0

    chain = five_layers(cfg.augment, cfg.seed)
    before = tf.function(lambda x: chain(x, training=True))
    no_aug = tf.function(lambda x: x)
    sides = {"ImageDataGenerator.flow_from_directory (lecture)": None,
             "transferlab: tf.data cache + RandomAffine (one resampling)": augment,
             "before: tf.data cache + 5 Keras augmentation layers (4 resamplings)": before,
             "transferlab, no augmentation (decode once, cache, prefetch)": no_aug}
    rates = {k: [] for k in sides}
    for epoch in range(args.epochs):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            if fn is None:
                for _ in range(len(flow)):
                    next(flow)
                dt = time.perf_counter() - t0
            else:
                for x, _ in splits.train:
                    fn(x).numpy()
                dt = time.perf_counter() - t0 + (load_s if epoch == 0 else 0.0)
            rates[name].append(n / dt)
        print(f"  epoch {epoch + 1}: " + ", ".join(f"{r[-1]:.0f}" for r in rates.values()) + f" img/s ({load()})",
              flush=True)
    ref0, ref = rates[next(iter(sides))][0], max(rates[next(iter(sides))][1:] or rates[next(iter(sides))])
    rows = []
    for name, r in rates.items():
        later = max(r[1:] or r)
        rows.append([name, f"{r[0]:.0f}", f"{later:.0f}", f"{r[0] / ref0:.2f}x", f"{later / ref:.2f}x"])
    print(f"\n{n} training JPEGs (400x300) -> {size} px, batch {bs}, lecture augmentation "
          f"(transferlab's epoch 1 includes its one decode of the split, {load_s:.1f} s)")
    print(table(["pipeline", "epoch 1 img/s", "later epochs img/s (best)", "epoch 1 vs IDG",
                 "later vs IDG"], rows))
    print("end:", load())


if __name__ == "__main__":
    main()
