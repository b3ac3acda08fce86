"""What a user writes instead of transferlab, and the table helpers, without transferlab.

Imports Keras only (when called), so the plain side of a comparison runs in a process that
never loads transferlab (benchmarks/sweep_vs_keras.py starts it with an empty PYTHONPATH);
``_common`` re-exports ``load`` and ``table`` for the other benchmarks.
"""

from __future__ import annotations

import os


def load() -> str:
    """The load average right now, e.g. ``load average 1.0/1.1/1.2``."""
    try:
        a, b, c = os.getloadavg()
        return f"load average {a:.1f}/{b:.1f}/{c:.1f}"
    except OSError:
        return "load average n/a"


def table(headers, rows) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def user_classifier(size: int, freeze: str, lr: float):
    """MobileNetV2 (random init) -> Flatten -> Dense(1, sigmoid), compiled with RMSprop(lr) and
    binary cross-entropy: the lecture's model as written by hand. ``freeze="all"``: the base
    frozen; else the lecture's loop, ``base.layers[:-4]`` frozen."""
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    if freeze == "all":
        base.trainable = False
    else:  # the lecture's loop
        for layer in base.layers[:-4]:
            layer.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.RMSprop(float(lr)), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model
