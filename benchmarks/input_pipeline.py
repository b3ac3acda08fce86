"""The input pipeline vs the lecture's ImageDataGenerator.flow_from_directory.

    .venv/bin/python benchmarks/input_pipeline.py [--images 400] [--size 224] [--epochs 3]

Same JPEG folder (2 classes, 400x300 px JPEGs written here), same target
size, batch 32, the lecture's augmentation (rotation 40, shifts 0.2, shear
0.2, zoom 0.2, horizontal flip) in both: ImageDataGenerator decodes and
augments image by image in Python every epoch; transferlab decodes once
(data.load: tf.data, parallel map, in-memory cache, prefetch) and augments
whole batches with the Keras preprocessing layers the model uses. Images/s
delivered per epoch, both in this process, alternated, best of the epochs
after the first (the first includes transferlab's one decode).
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

    from transferlab import synthetic

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import tensorflow as tf

    from transferlab import data
    from transferlab.model import augmentation

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

    ours, theirs = [], []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for _ in range(len(flow)):
            next(flow)
        theirs.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for x, _ in splits.train:
            augment(x).numpy()
        dt = time.perf_counter() - t0 + (load_s if epoch == 0 else 0.0)
        ours.append(n / dt)
        print(f"  epoch {epoch + 1}: ImageDataGenerator {theirs[-1]:.0f} img/s, transferlab "
              f"{ours[-1]:.0f} img/s ({load()})", flush=True)
    steady_o, steady_t = max(ours[1:] or ours), max(theirs[1:] or theirs)
    print(f"\n{n} training JPEGs (400x300) -> {size} px, batch {bs}, lecture augmentation")
    print(table(["pipeline", "epoch 1 img/s", "later epochs img/s (best)"], [
        ["ImageDataGenerator.flow_from_directory", f"{theirs[0]:.0f}", f"{steady_t:.0f}"],
        ["transferlab (tf.data cache + Keras augmentation layers)", f"{ours[0]:.0f} (one decode "
         f"{load_s:.1f} s incl.)", f"{steady_o:.0f}"],
        ["ratio", f"{ours[0] / theirs[0]:.1f}x", f"{steady_o / steady_t:.1f}x"],
    ]))
    print("end:", load())


if __name__ == "__main__":
    main()
