"""The classifier: inputs -> [augmentation] -> preprocess_input -> base -> head.

Pixels enter as float 0-255 (never divided by 255): each backbone's own
``preprocess_input`` runs inside the model, so a saved model takes raw images.
A pretrained (or frozen) base always runs with ``training=False`` (see
``InferenceMode``) so its BatchNorm layers stay in inference mode even when
their weights are trainable (the Keras fine-tuning guide's advice); a base
initialised at random that trains runs as plain Keras runs it
(``FollowsTraining``: BatchNorm on batch statistics in ``fit``, moving
statistics following). Augmentation layers are only active during ``fit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras

from transferlab.models import freeze, registry
from transferlab.models.layers import FollowsTraining, InferenceMode, Preprocess, augmentation
from transferlab.models.metrics import BalancedAccuracy
from transferlab.models.registry import input_size
from transferlab.models.weights import build as build_base


_OPTIMIZERS = {"rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}


class _ScaledBaseLR:
    """Mixin: the base's variables are updated at ``lr * backbone_lr_mult``.

    Keras 3 optimizers call ``update_step(gradient, variable, learning_rate)``
    once per variable, so scaling the rate there gives discriminative learning
    rates for any optimizer (scaling gradients instead would be undone by
    Adam's and RMSprop's normalisation). AdamW's decoupled weight decay is
    scaled the same way (``_apply_weight_decay``).
    """

    def __init__(self, *args, base_variables=(), backbone_lr_mult=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._mult = backbone_lr_mult
        # The TF backend passes the backing tf.Variable, so key by both objects.
        self._base_ids = {id(v) for v in base_variables} | {id(getattr(v, "value", v)) for v in base_variables}

    def update_step(self, gradient, variable, learning_rate):
        if id(variable) in self._base_ids:
            learning_rate = learning_rate * self._mult
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        """Decoupled weight decay (AdamW) at ``lr * mult * wd`` for the base's variables.

        Keras applies the decay outside ``update_step``, as
        ``variable -= variable * weight_decay * self.learning_rate``, so the
        scaled rate above would not reach it. The base's variables are decayed
        by the backend's own code with ``weight_decay * mult`` (read when the
        train step is traced), the others with ``weight_decay``.
        """
        if self.weight_decay is None or self._mult == 1.0:
            return super()._apply_weight_decay(variables)
        base = [v for v in variables if id(v) in self._base_ids]
        rest = [v for v in variables if id(v) not in self._base_ids]
        super()._apply_weight_decay(rest)
        weight_decay = self.weight_decay
        self.weight_decay = weight_decay * self._mult
        try:
            super()._apply_weight_decay(base)
        finally:
            self.weight_decay = weight_decay


def build_optimizer(cfg, lr: float | None = None, base_variables=()):
    """The configured optimizer at ``lr`` (default: the top-level ``cfg.lr``).

    Args:
        cfg: the job config (``optimizer`` group).
        lr: learning rate of this phase.
        base_variables: the base's trainable variables, scaled by
            ``optimizer.backbone_lr_mult`` when it is not 1.
    """
    o = cfg.optimizer
    cls = getattr(keras.optimizers, _OPTIMIZERS[o.name])
    kwargs = {"learning_rate": float(cfg.lr if lr is None else lr)}
    if o.name in ("rmsprop", "sgd"):
        kwargs["momentum"] = o.momentum
    if o.name == "adamw":
        kwargs["weight_decay"] = o.weight_decay if o.weight_decay is not None else 0.004
    if o.backbone_lr_mult != 1.0 and base_variables:
        cls = type(f"ScaledBaseLR{cls.__name__}", (_ScaledBaseLR, cls), {})
        kwargs.update(base_variables=list(base_variables), backbone_lr_mult=o.backbone_lr_mult)
    return cls(**kwargs)


@dataclass(frozen=True)
class SpeedSwitches:
    """What ``runtime.precision`` and ``runtime.jit_compile`` become on this machine.

    Attributes:
        policy: the Keras dtype policy applied (``float32`` unless a GPU is present).
        jit: the ``jit_compile`` passed to ``model.compile`` (``"auto"``, True or False).
        tags: MLflow tag -> what was applied, and why a switch was skipped.
    """

    policy: str
    jit: bool | str
    tags: dict = field(default_factory=dict)
    gpu: bool = False  # whether TensorFlow sees a GPU


def speed_switches(cfg) -> SpeedSwitches:
    """GPU-only switches, skipped on a CPU-only machine with the reason.

    Mixed precision only pays with tensor cores (on this CPU it is slower);
    forced XLA was measured 5x slower on CPU, and Keras' own ``"auto"``
    already compiles with XLA on a GPU and never on a CPU.
    """
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    precision = cfg.runtime.get("precision", "float32")
    jit = cfg.runtime.get("jit_compile", None)
    tags = {}
    if precision == "float32" or gpu:
        policy, tags["precision"] = precision, precision
    else:
        policy = "float32"
        tags["precision"] = (f"float32 (runtime.precision={precision} skipped: no GPU; "
                             "mixed precision only pays on GPU tensor cores)")
    if jit is None:
        jit_value = "auto"
        tags["jit_compile"] = ("auto (Keras: XLA on GPU where every layer supports it)" if gpu
                               else "off (auto: Keras uses no XLA on CPU)")
    elif jit and not gpu:
        jit_value = False
        tags["jit_compile"] = ("off (runtime.jit_compile=true skipped: no GPU; forced XLA was "
                               "measured 5x slower on CPU)")
    else:
        jit_value = bool(jit)
        tags["jit_compile"] = "on" if jit_value else "off"
    return SpeedSwitches(policy, jit_value, tags, gpu)


def compile_model(model, cfg, num_classes: int, lr: float | None = None, base=None,
                  steps_per_execution: int = 1) -> None:
    """(Re)compiles with a fresh optimizer; required after any change of ``trainable``.

    ``steps_per_execution``: Keras runs that many steps per call of its train
    function (the same steps and numbers, fewer Python round trips; batch-level
    callbacks then see every n-th step)."""
    loss = "binary_crossentropy" if num_classes == 2 else "categorical_crossentropy"
    base_vars = base.trainable_variables if base is not None else ()
    # Balanced accuracy rides along with the validation pass Keras makes anyway
    # (logs val_balanced_accuracy): on imbalanced data accuracy alone misleads.
    model.compile(optimizer=build_optimizer(cfg, lr, base_vars), loss=loss,
                  metrics=["accuracy", BalancedAccuracy(max(2, num_classes))],
                  jit_compile=speed_switches(cfg).jit, steps_per_execution=steps_per_execution)


def build_model(cfg, num_classes: int, tracking_uri: str | None = None):
    """Builds and compiles the classifier for one job.

    Args:
        cfg: the validated job config.
        num_classes: 2 gives Dense(1, sigmoid) + binary cross-entropy (the
            lecture); more gives Dense(k, softmax) + categorical cross-entropy.
        tracking_uri: the MLflow store that ``backbone.weights=run:...`` is looked up in.

    Returns:
        ``(model, base, plan)``: the compiled model, its backbone and the
        applied ``freeze.FreezePlan``.
    """
    size = input_size(cfg)
    policy = speed_switches(cfg).policy
    keras.mixed_precision.set_global_policy(policy)  # every job sets it: none leaks to the next
    mixed = policy != "float32"
    keras.utils.set_random_seed(cfg.seed)
    spec = registry.spec(cfg.backbone.name)
    base = build_base(cfg.backbone.name, size, cfg.backbone.weights, tracking_uri,
                      options=cfg.backbone)
    random_init = cfg.backbone.weights is None
    plan = freeze.apply(base, cfg.freeze, spec.block_regex, random_init=random_init,
                        label=spec.constructor)

    # Again right before the new layers: each unseeded initializer and Dropout draws its seed
    # from Python's RNG when created, and the routes create different numbers of layers
    # before (a run: or .keras copy loads a whole model first), so the head's initial
    # weights depended on the route (measured: epoch-1 loss 0.993 / 0.618 / 1.380 for
    # file / .keras / run: with the same weights).
    keras.utils.set_random_seed(cfg.seed)
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    aug = augmentation(cfg.augment, cfg.seed, **({"dtype": "float32"} if mixed else {}))
    if aug is not None:
        x = aug(x)
    # Mixed precision: preprocess_input in float32 (pixel offsets), outputs in float32 (the loss).
    x = Preprocess(cfg.backbone.name, name="preprocess", **({"dtype": "float32"} if mixed else {}))(x)
    x = base_layer(base, random_init, plan)(x)
    if cfg.head.pooling == "flatten":
        x = keras.layers.Flatten(name="head_flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="head_gap")(x)
    if cfg.head.dropout:
        x = keras.layers.Dropout(cfg.head.dropout, name="head_dropout")(x)
    out_dtype = {"dtype": "float32"} if mixed else {}
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="predictions", **out_dtype)(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions",
                                     **out_dtype)(x)
    model = keras.Model(inputs, outputs, name=f"{cfg.backbone.name}_classifier")
    compile_model(model, cfg, num_classes, base=base)
    return model, base, plan


def base_layer(base, random_init: bool, plan):
    """The layer named ``base`` that runs the backbone: ``FollowsTraining`` for a random
    base that trains (plain Keras), ``InferenceMode`` for a pretrained or frozen one."""
    if random_init and plan.params_trainable:
        return FollowsTraining(base, name="base")
    return InferenceMode(base, name="base")


def batchnorm_mode(model) -> str:
    """How the model's base runs its BatchNorm layers in ``fit`` (the ``batchnorm`` tag)."""
    if isinstance(model.get_layer("base"), FollowsTraining):
        return ("training mode in fit, moving statistics follow (random init, trained: as "
                "plain Keras); inference mode for evaluation")
    return "inference mode always (moving statistics fixed: pretrained or frozen base)"


NOISE_LAYERS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
          "GaussianDropout", "AlphaDropout", "GaussianNoise")


def noise_kinds() -> tuple:
    """Keras' layer classes that are random in training mode (dropout and noise)."""
    return tuple(getattr(keras.layers, k) for k in NOISE_LAYERS if hasattr(keras.layers, k))


def _noise_layers(base) -> list:
    """The base's dropout and noise layers (EfficientNet's stochastic depth)."""
    return [l for l in base._flatten_layers() if isinstance(l, noise_kinds())]  # noqa: SLF001


def calibrate_batchnorm(base, backbone: str, images) -> int:
    """Sets a randomly initialised base's BatchNorm statistics from real images.

    A base built with ``weights=None`` has moving mean 0 and variance 1 in
    every BatchNorm layer; called in inference mode (as the model calls it)
    its activations then shrink layer after layer until the features are
    constant (measured: std ~1e-11 at the output of MobileNetV2/V3), so
    nothing can be learnt. One forward pass in training mode with momentum 0
    replaces those statistics by the batch's, layer by layer. The base's
    dropout and noise layers (EfficientNet's stochastic depth) are switched off
    for that pass: only BatchNorm runs in training mode, so the statistics are
    those of the network the model evaluates. Pretrained bases are never
    touched: their ImageNet statistics are what transfer.

    Args:
        base: the backbone model (weights=None).
        backbone: its registry name (for ``preprocess_input``).
        images: a float32 batch of 0-255 training images.

    Returns:
        The number of BatchNorm layers calibrated.
    """
    bns = [l for l in base._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    saved = [(l.trainable, l.momentum) for l in bns]
    noise = _noise_layers(base)
    for l in bns:
        l.trainable, l.momentum = True, 0.0
    for l in noise:  # an instance attribute: Layer.__call__ looks ``call`` up on the layer
        l.call = lambda inputs, *args, **kwargs: inputs
    try:
        base(registry.preprocess_fn(backbone)(images), training=True)
    finally:
        for l, (trainable, momentum) in zip(bns, saved):
            l.trainable, l.momentum = trainable, momentum
        for l in noise:
            del l.call  # back to the class's call
    return len(bns)


def param_counts(model) -> tuple[int, int]:
    """(total, trainable) parameter counts, as ``model.summary()`` shows them."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    total = trainable + sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return total, trainable
