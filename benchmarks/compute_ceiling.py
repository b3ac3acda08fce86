"""How close a frozen VGG19@224 forward pass runs to this machine's float32 matmul ceiling.

    .venv/bin/python benchmarks/compute_ceiling.py

Measures, in one process: the float32 matmul rate (square 1024/2048/4096,
best of several runs, all cores) and the images/s of VGG19@224 (include_top=False, inference
mode, batch 16, best of several batches), multiplies the latter by the
forward FLOPs per image counted from the conv layers (2 x MACs), and prints
the ratio. Above 100 % means the convolutions (oneDNN) run faster than
TF's own matmul kernel: the forward pass is at this machine's ceiling, and
only doing less work (the feature cache) makes it faster.
"""

from __future__ import annotations

import time

from _common import load, machine, table


def vgg19_flops(model) -> float:
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += 2.0 * h * w * cout * kh * kw * cin
    return total


def main():
    import keras
    import numpy as np
    import tensorflow as tf

    print("machine:", machine())
    mm = tf.function(lambda a, b: tf.matmul(a, b))
    best_mm, best_n = 0.0, 0
    for n in (1024, 2048, 4096):
        a = tf.random.normal((n, n))
        b = tf.random.normal((n, n))
        mm(a, b).numpy()
        for _ in range(8):
            t0 = time.perf_counter()
            mm(a, b).numpy()
            rate = 2 * n**3 / (time.perf_counter() - t0)
            if rate > best_mm:
                best_mm, best_n = rate, n
    vgg = keras.applications.VGG19(include_top=False, weights=None, input_shape=(224, 224, 3))
    flops = vgg19_flops(vgg)
    fwd = tf.function(lambda x: vgg(x, training=False))
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (16, 224, 224, 3)).astype("float32"))
    fwd(x).numpy()
    best_ips = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        fwd(x).numpy()
        best_ips = max(best_ips, 16 / (time.perf_counter() - t0))
    rate = best_ips * flops
    print(table(["what", "figure"], [
        [f"float32 matmul (best of 1024/2048/4096 square, 8 runs each; best at {best_n})",
         f"{best_mm / 1e9:.0f} GFLOP/s"],
        ["VGG19@224 forward FLOPs per image (conv, 2xMAC)", f"{flops / 1e9:.1f} GFLOP"],
        ["VGG19@224 frozen forward, batch 16, best of 5", f"{best_ips:.1f} images/s"],
        ["VGG19 forward rate", f"{rate / 1e9:.0f} GFLOP/s"],
        ["share of the matmul ceiling", f"{100 * rate / best_mm:.0f} %"],
    ]))
    print("end:", load())


if __name__ == "__main__":
    main()
