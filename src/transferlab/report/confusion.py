"""Confusions for any number of classes: the matrix up to 30, aggregated beyond.

A k x k matrix with a number in every cell stops being readable (and cheap)
long before k = 120: drawing one cost 61 s and 6.3 GB for a 13,140 x 13,095 px
PNG. Up to ``READABLE`` classes the figure is the matrix (counts in the
non-empty cells only, at most one text per test image); beyond, it shows the
``TOP`` most frequent confusions (true -> predicted) and the ``TOP`` classes
with the lowest recall, computed from the (true, pred) pairs without ever
forming the k x k matrix, so time and memory grow with the test images, not
with k squared. The figure has a fixed size whatever k.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from transferlab.report import fonts

READABLE = 30
TOP = 20


def matrix(true, pred, k: int) -> np.ndarray:
    """k x k counts, rows = true class (use only for small k: it is k squared)."""
    mat = np.zeros((k, k), dtype=np.int64)
    np.add.at(mat, (np.asarray(true, int), np.asarray(pred, int)), 1)
    return mat


def top_confusions(true, pred, names: list[str], n: int = TOP) -> list[tuple[str, str, int, float]]:
    """The ``n`` most frequent (true, predicted) pairs with true != predicted.

    Returns:
        ``(true name, predicted name, images, share of the true class's images)``,
        most frequent first (ties: class order).
    """
    true, pred = np.asarray(true, np.int64), np.asarray(pred, np.int64)
    wrong = true != pred
    if not wrong.any():
        return []
    k = max(len(names), int(max(true.max(), pred.max())) + 1)
    codes, counts = np.unique(true[wrong] * k + pred[wrong], return_counts=True)
    support = np.bincount(true, minlength=k)
    order = np.lexsort((codes, -counts))[:n]
    name = (lambda i: names[i] if i < len(names) else str(i))
    return [(name(int(codes[i] // k)), name(int(codes[i] % k)), int(counts[i]),
             float(counts[i] / max(1, support[codes[i] // k]))) for i in order]


def worst_recall(true, pred, names: list[str], n: int = TOP) -> list[tuple[str, float, int]]:
    """The ``n`` classes with the lowest recall: ``(name, recall, test images)``."""
    true, pred = np.asarray(true, np.int64), np.asarray(pred, np.int64)
    k = max(len(names), int(true.max(initial=-1)) + 1)
    support = np.bincount(true, minlength=k)
    right = np.bincount(true[true == pred], minlength=k)
    present = np.flatnonzero(support)
    recall = right[present] / support[present]
    order = present[np.lexsort((present, recall))][:n]
    return [(names[i] if i < len(names) else str(i), float(right[i] / support[i]),
             int(support[i])) for i in order]


def figure(true, pred, names: list[str], title: str = "") -> tuple[Figure, list[int]]:
    """The job's confusion figure and the class indices shown as ``#i`` (no font has them)."""
    k = len(names)
    if k <= READABLE:
        return _matrix_figure(true, pred, names, title)
    return _aggregate_figure(true, pred, names, title)


def _matrix_figure(true, pred, names, title):
    k = len(names)
    cm = matrix(true, pred, k)
    side = min(11.0, max(5.0, 2.8 + 0.28 * k))
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    size = 9 if k <= 10 else 7 if k <= 20 else 5.5
    for t, p in zip(*np.nonzero(cm)):  # empty cells stay blank: at most one text per image
        ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=size,
                color="white" if norm[t, p] > 0.6 else "black")
    labels, by_index = fonts.labels(names)
    ax.set_xticks(range(k), labels, rotation=45 if k <= 10 else 90, ha="right" if k <= 10 else "center",
                  fontsize=size + 1)
    ax.set_yticks(range(k), labels, fontsize=size + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Test confusions\n(colour: share of the true class)", fontsize=9)
    fig.tight_layout()
    return fig, by_index


def _aggregate_figure(true, pred, names, title):
    pairs = top_confusions(true, pred, names)
    worst = worst_recall(true, pred, names)
    fig = Figure(figsize=(12, 0.26 * TOP + 1.8))
    left, right = fig.subplots(1, 2)
    labels, by_index = fonts.labels(names)
    index = {n: i for i, n in enumerate(names)}
    short = (lambda n: labels[index[n]] if n in index else n)
    if pairs:
        y = np.arange(len(pairs))[::-1]
        left.barh(y, [p[2] for p in pairs], color="#c0504d")
        left.set_yticks(y, [f"{short(a)} → {short(b)}" for a, b, _, _ in pairs], fontsize=7)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("test images")
    left.set_title(f"{len(pairs)} most frequent confusions (true → predicted)", fontsize=9)
    y = np.arange(len(worst))[::-1]
    bars = right.barh(y, [w[1] for w in worst], color="#4f81bd")
    right.bar_label(bars, [f"{w[1]:.2f}" for w in worst], fontsize=7, padding=2)
    right.set_yticks(y, [f"{short(n)} (n={s})" for n, _, s in worst], fontsize=7)
    right.set_xlim(0, 1)
    right.set_xlabel("recall")
    right.set_title(f"{len(worst)} classes with the lowest recall", fontsize=9)
    fig.suptitle(title or f"Test confusions, {len(names)} classes (aggregated)", fontsize=10)
    fig.tight_layout()
    return fig, by_index


def config_tables(table, n: int = 10) -> list[dict]:
    """For selections with more than ``READABLE`` classes: per configuration, its ``n`` most
    frequent confusions over all its seeds (the report shows tables, not k x k figures)."""
    from transferlab.report.table import config_label

    out = []
    for cfg in table.configs:
        preds = [r.predictions for r in cfg.runs if r.predictions is not None]
        names = next((r.classes for r in cfg.runs if r.classes), None) or []
        k = max([p.n_classes for p in preds] + [len(names)], default=0)
        if not preds or k <= READABLE:
            continue
        names = names if len(names) >= k else [str(i) for i in range(k)]
        true = np.concatenate([p.true for p in preds])
        pred = np.concatenate([p.pred for p in preds])
        out.append(dict(label=config_label(cfg, table.axes) or "all runs", k=k,
                        seeds=len(preds), rows=top_confusions(true, pred, names, n)))
    return out
