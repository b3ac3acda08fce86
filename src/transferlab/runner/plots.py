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


def confusion(true, pred, class_names, path: Path) -> list[int]:
    """Saves the test confusion figure and returns the classes labelled ``#index``.

    Up to 30 classes the matrix, beyond it the most frequent confusions and the
    classes with the lowest recall (report/confusion.py): bounded size, time and
    memory for any number of classes (120 classes took 61 s and 6.3 GB before).
    Names no installed font can draw are labelled ``#<index of classes.json>``.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from transferlab.report import confusion as cf
    from transferlab.report import fonts

    with rc_context(fonts.rc()):
        fig, by_index = cf.figure(true, pred, [str(n) for n in class_names])
        if by_index:
            fig.text(0.005, 0.005, f"#i: class i of classes.json ({len(by_index)} name(s) "
                     "no installed font can draw; make fonts installs Noto CJK)", fontsize=7)
        FigureCanvasAgg(fig)
        fig.savefig(path, dpi=90)
    return by_index
