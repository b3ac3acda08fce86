"""The keys a selection varies in: display order of values, which key follows which,
and the default axes of the headline matrix. Pure Python over field dicts."""

from __future__ import annotations

import re

LABELS = ("backbone", "freeze")
SEED = "seed"
# k-fold: runs that differ only in the fold (or the seed) are replicates of one configuration;
# so are runs on other random splits of one folder (dataset.split_seed): their validation
# scores come from different images, so choosing between split seeds would choose noise.
FOLD = "dataset.fold"
SPLIT_SEED = "dataset.split_seed"
REPLICATES = (SEED, FOLD, SPLIT_SEED)


def _natural(value) -> tuple:
    parts = re.split(r"(\d+(?:\.\d+)?)", str(value))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def sort_values(key: str, values) -> list:
    """Values of one key in display order: numbers numerically, freeze from frozen to free."""
    vals = list(dict.fromkeys(values))
    present = [v for v in vals if v is not None]
    try:
        ordered = sorted(present, key=float)
    except (TypeError, ValueError):
        if key == "freeze":
            rank = {"all": 0, "none": 2}
            ordered = sorted(present, key=lambda v: (rank.get(v, 1), _natural(v)))
        else:
            ordered = sorted(present, key=_natural)
    return ordered + ([None] if None in vals else [])


def determined(key: str, by: list[str], rows: list[dict]) -> bool:
    """True when the value of ``key`` is a function of the values of ``by``."""
    seen: dict[tuple, object] = {}
    for r in rows:
        k = tuple(r.get(b) for b in by)
        if seen.setdefault(k, r.get(key)) != r.get(key):
            return False
    return True


def axes_of(swept: list[str], rows_f: list[dict]) -> list[str]:
    """Swept keys that no earlier swept key determines (``image_size`` follows ``backbone``,
    ``freeze.n`` follows ``freeze``), seed and fold excluded: what a sweep really varies."""
    axes: list[str] = []
    for k in swept:
        if k not in REPLICATES and not any(determined(k, [a], rows_f) for a in axes):
            axes.append(k)
    return axes


def default_axes(axes: list[str], rows: str | None, cols: str | None) -> tuple[str, str]:
    """Matrix rows and columns: the user's, else ``backbone`` x ``freeze`` where they are
    swept, else swept keys (an lr-only sweep gets lr columns, not one-cell tables)."""
    others = [a for a in axes if a not in LABELS]
    col_pref = [k for k in ["freeze", *others, "backbone"] if k == "freeze" or k in axes]
    row_pref = [k for k in ["backbone", *others, "freeze"] if k == "backbone" or k in axes]
    if cols is None:
        cols = next((k for k in col_pref if k in axes and k != rows), None) or (
            "freeze" if rows != "freeze" else "backbone")
    if rows is None:
        rows = next((k for k in row_pref if k in axes and k != cols), None) or (
            "backbone" if cols != "backbone" else "freeze")
    return rows, cols
