"""The backbone registry: every application of ``keras.applications`` as data.

The table is plain Python so config validation (sizes, layer counts) runs
before TensorFlow is imported; ``models.weights.build`` is the one factory that
turns an entry and a weights source into a ``keras.Model``. ``tests/test_backbones.py`` enumerates the
installed ``keras.applications`` and fails when an application lacks an
entry here or a YAML in ``conf/backbone/``, or when a layer count drifts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """What the framework needs to know about one Keras application.

    Attributes:
        name: the lower-case name users type (``backbone=vgg19``).
        constructor: the ``keras.applications`` function, e.g. ``"VGG19"``.
        module: the ``keras.applications`` sub-module holding its
            ``preprocess_input`` (a pass-through where the model rescales
            itself: EfficientNet(V2), ConvNeXt, MobileNetV3).
        default_size: the input side length the ImageNet weights were trained at.
        min_size: the smallest input side Keras accepts.
        num_layers: ``len(base.layers)`` with ``include_top=False`` of the graph Keras
            builds for its ImageNet weights (``models.weights.build`` builds that graph
            for every weights source; EfficientNetB0-B7 have one layer more than with
            ``weights=None``).
        block_regex: regex whose group 1 is a layer's block id (None where
            the layer names carry no blocks).
    """

    name: str
    constructor: str
    module: str
    default_size: int
    min_size: int
    num_layers: int
    block_regex: str | None


# Block ids as the Keras layer names spell them.
_BLOCKS = {
    "vgg": r"^(block\d+)_",  # block5_conv1
    "resnet": r"^(conv\d+_block\d+)_",  # conv5_block3_1_conv (ResNet, ResNetV2, DenseNet)
    "mobilenet": r"^conv_(?:dw|pw)_(\d+)",  # conv_dw_13, conv_pw_13_bn
    "mobilenet_v2": r"^(block_\d+|expanded_conv)_",  # block_16_expand; the first block: expanded_conv_project
    "mobilenet_v3": r"^(expanded_conv(?:_\d+)?)_",  # expanded_conv_10_add
    "efficientnet": r"^(block\d+[a-z])_",  # block7a_project_conv
    "inception_resnet_v2": r"^(block(?:35|17|8)_\d+)(?:_|$)",  # block8_10_conv
    "nasnet": r"(?:normal|reduction)_.*?_((?:stem_|reduce_)?\d+)$",  # normal_add_1_12
    "convnext": r"_(stage_\d+_block_\d+)_",  # convnext_tiny_stage_3_block_2_gelu
    "inception_v3": None,  # conv2d_93, mixed10: no block names
}

# constructor, module, default size, min size, layers (include_top=False, ImageNet graph), block family
_TABLE = [
    ("Xception", "xception", 299, 71, 132, "vgg"),
    ("VGG16", "vgg16", 224, 32, 19, "vgg"),
    ("VGG19", "vgg19", 224, 32, 22, "vgg"),
    ("ResNet50", "resnet", 224, 32, 175, "resnet"),
    ("ResNet101", "resnet", 224, 32, 345, "resnet"),
    ("ResNet152", "resnet", 224, 32, 515, "resnet"),
    ("ResNet50V2", "resnet_v2", 224, 32, 190, "resnet"),
    ("ResNet101V2", "resnet_v2", 224, 32, 377, "resnet"),
    ("ResNet152V2", "resnet_v2", 224, 32, 564, "resnet"),
    ("InceptionV3", "inception_v3", 299, 75, 311, "inception_v3"),
    ("InceptionResNetV2", "inception_resnet_v2", 299, 75, 780, "inception_resnet_v2"),
    ("MobileNet", "mobilenet", 224, 32, 86, "mobilenet"),
    ("MobileNetV2", "mobilenet_v2", 224, 32, 154, "mobilenet_v2"),
    ("MobileNetV3Small", "mobilenet_v3", 224, 32, 157, "mobilenet_v3"),
    ("MobileNetV3Large", "mobilenet_v3", 224, 32, 187, "mobilenet_v3"),
    ("DenseNet121", "densenet", 224, 32, 427, "resnet"),
    ("DenseNet169", "densenet", 224, 32, 595, "resnet"),
    ("DenseNet201", "densenet", 224, 32, 707, "resnet"),
    ("NASNetMobile", "nasnet", 224, 32, 769, "nasnet"),
    ("NASNetLarge", "nasnet", 331, 32, 1039, "nasnet"),
    ("EfficientNetB0", "efficientnet", 224, 32, 238, "efficientnet"),
    ("EfficientNetB1", "efficientnet", 240, 32, 340, "efficientnet"),
    ("EfficientNetB2", "efficientnet", 260, 32, 340, "efficientnet"),
    ("EfficientNetB3", "efficientnet", 300, 32, 385, "efficientnet"),
    ("EfficientNetB4", "efficientnet", 380, 32, 475, "efficientnet"),
    ("EfficientNetB5", "efficientnet", 456, 32, 577, "efficientnet"),
    ("EfficientNetB6", "efficientnet", 528, 32, 667, "efficientnet"),
    ("EfficientNetB7", "efficientnet", 600, 32, 814, "efficientnet"),
    ("EfficientNetV2B0", "efficientnet_v2", 224, 32, 270, "efficientnet"),
    ("EfficientNetV2B1", "efficientnet_v2", 240, 32, 334, "efficientnet"),
    ("EfficientNetV2B2", "efficientnet_v2", 260, 32, 349, "efficientnet"),
    ("EfficientNetV2B3", "efficientnet_v2", 300, 32, 409, "efficientnet"),
    ("EfficientNetV2S", "efficientnet_v2", 384, 32, 513, "efficientnet"),
    ("EfficientNetV2M", "efficientnet_v2", 480, 32, 740, "efficientnet"),
    ("EfficientNetV2L", "efficientnet_v2", 480, 32, 1028, "efficientnet"),
    ("ConvNeXtTiny", "convnext", 224, 32, 133, "convnext"),
    ("ConvNeXtSmall", "convnext", 224, 32, 259, "convnext"),
    ("ConvNeXtBase", "convnext", 224, 32, 259, "convnext"),
    ("ConvNeXtLarge", "convnext", 224, 32, 259, "convnext"),
    ("ConvNeXtXLarge", "convnext", 224, 32, 259, "convnext"),
]

BACKBONES: dict[str, BackboneSpec] = {
    c.lower(): BackboneSpec(c.lower(), c, m, d, s, n, _BLOCKS[f])
    for c, m, d, s, n, f in _TABLE
}


class WeightsUnavailable(RuntimeError):
    """The ImageNet weights could not be downloaded (offline machine, ...)."""


def spec(name: str) -> BackboneSpec:
    """Looks up a backbone by its lower-case name.

    Raises:
        KeyError: with the allowed names.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"Unknown backbone {name!r}; allowed: {', '.join(sorted(BACKBONES))}") from None


def preprocess_fn(name: str):
    """The backbone's own ``preprocess_input`` (expects 0-255 RGB pixels)."""
    import keras

    return getattr(keras.applications, spec(name).module).preprocess_input


def input_size(cfg) -> int:
    """The image side length a job trains at: ``image_size`` or the backbone's own (pixels)."""
    return int(cfg.image_size or spec(cfg.backbone.name).default_size)
