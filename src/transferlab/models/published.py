"""The Keras applications table as Keras publishes it: pure data, no TensorFlow.

Source: https://keras.io/api/applications/ ("Available models"; the keras-io
repository's ``templates/api/applications/index.md``). Its first 17 rows
(Xception ... NASNetMobile) are the table the lecture copies
(``shared/lecture-vgg19-finetuning.txt``, "Available models"); the lecture's
rows and these are the same figures (``tests/test_bench.py`` compares them).

What the columns mean, as Keras states them under the table:

- Size (MB): the ImageNet weights file with the top (MiB: VGG19's 143.7M
  float32 parameters are 548 MiB, published as 549);
- Top-1 / Top-5: accuracy on the ImageNet validation set (percent);
- Parameters: with the 1000-class top (``include_top=True``);
- Depth: "the number of layers with parameters" (``len([l for l in
  model.layers if l.weights])``: VGG19 16 conv + 3 dense = 19, ResNet50 53
  conv + 53 BatchNorm + 1 dense = 107; the page's other sentence, "topological
  depth ... includes activation layers", does not give its own numbers);
- Time (ms) per inference step: batch 32, "the average of 30 batches and 10
  repetitions", on an AMD EPYC (92 cores) for CPU and a Tesla A100 for GPU.

``None`` where the page shows "-" (EfficientNetV2 and ConvNeXt depth and
times, ConvNeXt top-5). MobileNetV3Small/Large are not in the table.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "https://keras.io/api/applications/"
CONDITIONS = ("AMD EPYC Processor (with IBPB), 92 cores (CPU); Tesla A100 (GPU); batch 32; "
              "mean of 30 batches x 10 repetitions")
BATCH = 32
BATCHES = 30
REPEATS = 10


@dataclass(frozen=True)
class Published:
    """One row of the Keras applications table.

    Attributes:
        model: the Keras constructor name (``VGG19``).
        size_mb: weights file with the top, MiB.
        top1, top5: ImageNet validation accuracy, percent (None: not published).
        params_m: parameters with the top, millions, as printed (``143.7``).
        depth: layers with parameters (None: not published).
        cpu_ms, gpu_ms: ms per inference step of batch 32 (None: not published).
    """

    model: str
    size_mb: float
    top1: float | None
    top5: float | None
    params_m: float
    depth: int | None
    cpu_ms: float | None
    gpu_ms: float | None


# model, size MB, top-1 %, top-5 %, params (M), depth, CPU ms, GPU ms  (keras.io, as printed)
_ROWS = [
    ("Xception", 88, 79.0, 94.5, 22.9, 81, 109.4, 8.1),
    ("VGG16", 528, 71.3, 90.1, 138.4, 16, 69.5, 4.2),
    ("VGG19", 549, 71.3, 90.0, 143.7, 19, 84.8, 4.4),
    ("ResNet50", 98, 74.9, 92.1, 25.6, 107, 58.2, 4.6),
    ("ResNet50V2", 98, 76.0, 93.0, 25.6, 103, 45.6, 4.4),
    ("ResNet101", 171, 76.4, 92.8, 44.7, 209, 89.6, 5.2),
    ("ResNet101V2", 171, 77.2, 93.8, 44.7, 205, 72.7, 5.4),
    ("ResNet152", 232, 76.6, 93.1, 60.4, 311, 127.4, 6.5),
    ("ResNet152V2", 232, 78.0, 94.2, 60.4, 307, 107.5, 6.6),
    ("InceptionV3", 92, 77.9, 93.7, 23.9, 189, 42.2, 6.9),
    ("InceptionResNetV2", 215, 80.3, 95.3, 55.9, 449, 130.2, 10.0),
    ("MobileNet", 16, 70.4, 89.5, 4.3, 55, 22.6, 3.4),
    ("MobileNetV2", 14, 71.3, 90.1, 3.5, 105, 25.9, 3.8),
    ("DenseNet121", 33, 75.0, 92.3, 8.1, 242, 77.1, 5.4),
    ("DenseNet169", 57, 76.2, 93.2, 14.3, 338, 96.4, 6.3),
    ("DenseNet201", 80, 77.3, 93.6, 20.2, 402, 127.2, 6.7),
    ("NASNetMobile", 23, 74.4, 91.9, 5.3, 389, 27.0, 6.7),
    ("NASNetLarge", 343, 82.5, 96.0, 88.9, 533, 344.5, 20.0),
    ("EfficientNetB0", 29, 77.1, 93.3, 5.3, 132, 46.0, 4.9),
    ("EfficientNetB1", 31, 79.1, 94.4, 7.9, 186, 60.2, 5.6),
    ("EfficientNetB2", 36, 80.1, 94.9, 9.2, 186, 80.8, 6.5),
    ("EfficientNetB3", 48, 81.6, 95.7, 12.3, 210, 140.0, 8.8),
    ("EfficientNetB4", 75, 82.9, 96.4, 19.5, 258, 308.3, 15.1),
    ("EfficientNetB5", 118, 83.6, 96.7, 30.6, 312, 579.2, 25.3),
    ("EfficientNetB6", 166, 84.0, 96.8, 43.3, 360, 958.1, 40.4),
    ("EfficientNetB7", 256, 84.3, 97.0, 66.7, 438, 1578.9, 61.6),
    ("EfficientNetV2B0", 29, 78.7, 94.3, 7.2, None, None, None),
    ("EfficientNetV2B1", 34, 79.8, 95.0, 8.2, None, None, None),
    ("EfficientNetV2B2", 42, 80.5, 95.1, 10.2, None, None, None),
    ("EfficientNetV2B3", 59, 82.0, 95.8, 14.5, None, None, None),
    ("EfficientNetV2S", 88, 83.9, 96.7, 21.6, None, None, None),
    ("EfficientNetV2M", 220, 85.3, 97.4, 54.4, None, None, None),
    ("EfficientNetV2L", 479, 85.7, 97.5, 119.0, None, None, None),
    ("ConvNeXtTiny", 109.42, 81.3, None, 28.6, None, None, None),
    ("ConvNeXtSmall", 192.29, 82.3, None, 50.2, None, None, None),
    ("ConvNeXtBase", 338.58, 85.3, None, 88.5, None, None, None),
    ("ConvNeXtLarge", 755.07, 86.3, None, 197.7, None, None, None),
    ("ConvNeXtXLarge", 1310, 86.7, None, 350.1, None, None, None),
]

# registry name (lower-case constructor) -> published row
TABLE: dict[str, Published] = {r[0].lower(): Published(*r) for r in _ROWS}

# The rows the lecture's slide shows, in its order.
LECTURE = tuple(r[0].lower() for r in _ROWS[:17])


def get(name: str) -> Published | None:
    """The published row of a registry name (``vgg19``), or None where Keras publishes none."""
    return TABLE.get(name)


def params_label(n: int | float) -> str:
    """A parameter count as the table prints it: ``143667240`` -> ``"143.7M"``."""
    return f"{n / 1e6:.1f}M"
