"""Balanced accuracy as a Keras metric, so every epoch's validation pass yields it for free.

Computing it from validation predictions in a callback would run the
validation split through the model a second time every epoch; as a compiled
metric it accumulates a confusion matrix during the validation pass Keras
already makes (and during training, where it costs one ``bincount`` per step).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="transferlab")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean per-class recall over the classes present in the labels seen so far.

    The same number as ``sklearn.metrics.balanced_accuracy_score`` (classes
    that only appear among the predictions do not count). Labels are what the
    data pipeline yields: shape (batch, 1) with 0/1 for two classes (a sigmoid
    output, threshold 0.5, as Keras' ``accuracy``), one-hot (batch, k) otherwise.
    ``sample_weight`` is ignored: ``trainer.class_weight`` weights whole
    classes, which leaves every per-class recall unchanged.

    Args:
        num_classes: k >= 2; the state is a k x k float32 confusion matrix
            (4 MB at k = 1000).

    Raises:
        ValueError: ``num_classes`` < 2.
    """

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"BalancedAccuracy needs num_classes >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.confusion = self.add_variable(shape=(self.num_classes, self.num_classes),
                                           initializer="zeros", dtype="float32", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        if k == 2 and y_pred.shape[-1] == 1:
            true = ops.cast(ops.reshape(y_true, (-1,)) > 0.5, "int32")
            pred = ops.cast(ops.reshape(y_pred, (-1,)) > 0.5, "int32")
        else:
            true = ops.cast(ops.argmax(y_true, axis=-1), "int32")
            pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        counts = ops.bincount(true * k + pred, minlength=k * k)[: k * k]
        self.confusion.assign_add(ops.reshape(ops.cast(counts, "float32"), (k, k)))

    def result(self):
        support = ops.sum(self.confusion, axis=1)
        present = ops.cast(support > 0, "float32")
        recall = ops.diagonal(self.confusion) / ops.maximum(support, 1.0)
        return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), "float32"))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
