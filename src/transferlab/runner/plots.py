"""Per-run figures logged as MLflow artifacts (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def curves(history: dict, path: Path, title: str = "", boundary: int | None = None) -> None:
    """Accuracy and loss per epoch, train dotted and validation solid (as in the lecture).

    ``boundary``: first epoch of phase 2 in two-phase runs, drawn as a line.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        epochs = np.arange(1, len(history.get(key, [])) + 1)
        ax.plot(epochs, history.get(key, []), "b:", label=f"training {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "b-", label=f"validation {key}")
        if boundary:
            ax.axvline(boundary + 0.5, color="grey", linestyle="--", label="phase 2 starts")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion(true, pred, class_names, path: Path) -> np.ndarray:
    """Saves the test confusion matrix (rows = true class) and returns it."""
    k = len(class_names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (np.asarray(true, int), np.asarray(pred, int)), 1)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, cm[i, j], ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return cm
