"""The report's figures, drawn with matplotlib's object API (Agg, no pyplot state).

Each function returns ``Figure`` objects holding PNG bytes, ready to be inlined
as ``data:`` URIs. PNGs carry no software/date metadata so the same runs draw
the same bytes.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from transferlab.report import fonts
from transferlab.report.confusion import READABLE
from transferlab.report.table import Config, Table, sort_values

DPI = 90
MARKERS = "osD^vP*Xph<>"


@dataclass
class Figure:
    id: str
    title: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _colours(values: list) -> dict:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(values)}


def _facet_text(facet: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in facet.items())


def _mean_band(series: list[list[tuple[int, float]]]):
    """Steps, mean and std over runs (runs may stop at different epochs)."""
    per_step: dict[int, list[float]] = {}
    for s in series:
        for step, v in s:
            per_step.setdefault(step, []).append(v)
    steps = sorted(per_step)
    mean = np.array([np.mean(per_step[s]) for s in steps])
    std = np.array([np.std(per_step[s]) for s in steps])
    return np.array(steps), mean, std


def _phase_starts(cfg: Config) -> list[int]:
    starts = set()
    for r in cfg.runs:
        two = [step for step, v in r.history.get("phase", []) if v >= 2]
        if two:
            starts.add(min(two))
    return sorted(starts)


def curves(table: Table) -> list[Figure]:
    """Per facet and row value (backbone): accuracy and loss per epoch, colour = column."""
    out = []
    colours = _colours(_all_values(table, table.cols_key))
    for mi, m in enumerate(table.matrices):
        for ri, rv in enumerate(m.row_values):
            cfgs = [c for c in table.configs if c.runs and c.get(table.rows_key) == rv
                    and all(c.get(k) == v for k, v in m.facet.items())]
            if not any(r.history for c in cfgs for r in c.runs):
                continue
            fig = MplFigure(figsize=(10, 3.6))
            axes = fig.subplots(1, 2)
            for ax, metric, name in ((axes[0], "acc", "accuracy"), (axes[1], "loss", "loss")):
                for cfg in cfgs:
                    col = colours[cfg.get(table.cols_key)]
                    for key, style in ((metric, ":"), ("val_" + metric, "-")):
                        series = [r.history[key] for r in cfg.runs if r.history.get(key)]
                        if not series:
                            continue
                        x, mean, std = _mean_band(series)
                        ax.plot(x, mean, style, color=col, lw=1.6)
                        if len(series) > 1:
                            ax.fill_between(x, mean - std, mean + std, color=col, alpha=0.18,
                                            lw=0)
                    for start in _phase_starts(cfg):
                        ax.axvline(start - 0.5, color=col, ls="--", lw=1, alpha=0.7)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel("epoch")
                ax.set_ylabel(name)
                ax.grid(alpha=0.3)
            handles = [Line2D([], [], color=colours[c.get(table.cols_key)], lw=2,
                              label=f"{table.cols_key}={c.get(table.cols_key)} (n={len(c.runs)})")
                       for c in cfgs]
            handles += [Line2D([], [], color="k", ls=":", label="train"),
                        Line2D([], [], color="k", ls="-", label="validation")]
            if any(_phase_starts(c) for c in cfgs):
                handles.append(Line2D([], [], color="k", ls="--", label="phase 2 starts"))
            fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
            title = f"{table.rows_key}={rv}" + (f" ({_facet_text(m.facet)})" if m.facet else "")
            fig.suptitle(title, fontsize=10)
            fig.subplots_adjust(left=0.07, right=0.76, bottom=0.14, top=0.88, wspace=0.28)
            out.append(Figure(f"curves-{mi}-{ri}", f"Curves: {title}",
                              "Train dotted, validation solid; mean over seeds, band = ±1 std.",
                              _png(fig)))
    return out


def _all_values(table: Table, key: str) -> list:
    return sort_values(key, [c.get(key) for c in table.configs])


# x axes of the cost view: metric, label, whether the Pareto front is drawn (deployment costs)
COSTS = (("train_seconds", "training time [s]", False),
         ("params_trainable", "trainable parameters", False),
         ("infer_ms_per_image_b1", "inference latency, batch 1 [ms/image]", True),
         ("model_size_mb", "model size [MB]", True))


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def cost(table: Table) -> list[Figure]:
    """Per facet: test accuracy vs training time, trainable parameters, measured inference
    latency and model size, one point per configuration (mean over seeds, bars = std);
    the latency and size panels mark the Pareto front (nothing both cheaper and better)."""
    colours = _colours(_all_values(table, table.cols_key))
    markers = {v: MARKERS[i % len(MARKERS)]
               for i, v in enumerate(_all_values(table, table.rows_key))}
    out = []
    for mi, m in enumerate(table.matrices):
        cfgs = [c for c in table.configs if c.runs
                and all(c.get(k) == v for k, v in m.facet.items())]
        if not cfgs:
            continue
        # runs logged before latency was measured have none: those panels are left out
        costs = [c for c in COSTS if any(cfg.stat(c[0]) for cfg in cfgs)] or list(COSTS[:2])
        fig = MplFigure(figsize=(10, 3.6 * ((len(costs) + 1) // 2)))
        axes = np.atleast_1d(fig.subplots((len(costs) + 1) // 2, 2)).ravel()
        for ax, (metric, xlabel, front) in zip(axes, costs):
            pts = []
            for cfg in cfgs:
                acc, x = cfg.stat("test_acc"), cfg.stat(metric)
                if acc is None or x is None:
                    continue
                pts.append((x[0], acc[0]))
                ax.errorbar(x[0], acc[0], yerr=acc[1] or 0.0, xerr=x[1] or 0.0, ls="none",
                            marker=markers[cfg.get(table.rows_key)], ms=7, capsize=2,
                            color=colours[cfg.get(table.cols_key)])
            xs = [p[0] for p in pts]
            if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
            if front and len(pts) > 1:
                fx, fy = zip(*pareto(pts))
                ax.plot(fx, fy, ls="--", color="0.4", lw=1, drawstyle="steps-post",
                        label="Pareto front", zorder=0)
                ax.legend(loc="lower right", fontsize=7, frameon=False)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
        for ax in axes[len(costs):]:
            ax.set_visible(False)
        used_c = {c.get(table.cols_key) for c in cfgs}
        used_r = {c.get(table.rows_key) for c in cfgs}
        handles = [Line2D([], [], color=c, marker="s", ls="none", label=f"{table.cols_key}={v}")
                   for v, c in colours.items() if v in used_c]
        handles += [Line2D([], [], color="0.3", marker=mk, ls="none",
                           label=f"{table.rows_key}={v}")
                    for v, mk in markers.items() if v in used_r]
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
        title = "Cost vs accuracy" + (f" ({_facet_text(m.facet)})" if m.facet else "")
        fig.suptitle(title, fontsize=10)
        fig.subplots_adjust(left=0.07, right=0.78, bottom=0.1, top=0.92, wspace=0.28, hspace=0.4)
        out.append(Figure(f"cost-{mi}", title, "One point per configuration: mean over "
                          "seeds, bars = ±1 std. Latency and size are measured on the "
                          "machine that trained the job (its trained classifier, warm); "
                          "the dashed line is the Pareto front.", _png(fig)))
    return out


def _confusion(cfg: Config) -> tuple[np.ndarray, list[str]] | None:
    preds = [r.predictions for r in cfg.runs if r.predictions is not None]
    if not preds:
        return None
    k = max(p.n_classes for p in preds)
    names = next((r.classes for r in cfg.runs if r.classes), None)
    if not names or len(names) < k:
        names = [str(i) for i in range(k)]
    k = max(k, len(names))
    mat = np.zeros((k, k), dtype=np.int64)
    for p in preds:
        np.add.at(mat, (p.true, p.pred), 1)
    return mat, names


def confusions(table: Table) -> list[Figure]:
    """Per facet: small multiples of test confusion matrices (summed over seeds), up to
    ``confusion.READABLE`` classes; beyond, the report shows top-confusion tables."""
    out = []
    for mi, m in enumerate(table.matrices):
        cells = {}
        for cfg in table.configs:
            if all(cfg.get(k) == v for k, v in m.facet.items()) and _n_classes(cfg) <= READABLE:
                cm = _confusion(cfg)
                if cm is not None:
                    cells[(cfg.get(table.rows_key), cfg.get(table.cols_key))] = (cfg, cm)
        if not cells:
            continue
        rows = [r for r in m.row_values if any((r, c) in cells for c in m.col_values)]
        cols = [c for c in m.col_values if any((r, c) in cells for r in m.row_values)]
        side = 2.3 if max(len(cm[1]) for _, cm in cells.values()) <= 10 else 3.2
        fig = MplFigure(figsize=(side * len(cols) + 0.6, side * len(rows) + 0.5))
        axes = np.atleast_2d(fig.subplots(len(rows), len(cols), squeeze=False))
        for i, rv in enumerate(rows):
            for j, cv in enumerate(cols):
                ax = axes[i, j]
                if (rv, cv) not in cells:
                    ax.axis("off")
                    continue
                cfg, (mat, names) = cells[(rv, cv)]
                norm = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
                ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
                small = len(names) <= 10
                if small:
                    for (t, p), v in np.ndenumerate(mat):
                        ax.text(p, t, str(v), ha="center", va="center", fontsize=7,
                                color="white" if norm[t, p] > 0.6 else "black")
                labels, _ = fonts.labels(names, 10)
                ax.set_xticks(range(len(names)), labels, fontsize=6 if small else 4, rotation=90)
                ax.set_yticks(range(len(names)), labels, fontsize=6 if small else 4)
                ax.set_title(f"{rv} · {cv} (n={len(cfg.runs)})", fontsize=8)
                if i == len(rows) - 1:
                    ax.set_xlabel("predicted", fontsize=7)
                if j == 0:
                    ax.set_ylabel("true", fontsize=7)
        title = "Confusion matrices" + (f" ({_facet_text(m.facet)})" if m.facet else "")
        fig.suptitle(title, fontsize=10)
        w, h = fig.get_size_inches()
        fig.subplots_adjust(left=0.6 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.8 / h,
                            wspace=0.45, hspace=0.45)
        out.append(Figure(f"confusion-{mi}", title,
                          "Test split, counts summed over seeds; colour = row-normalised.",
                          _png(fig)))
    return out


def _n_classes(cfg: Config) -> int:
    preds = [r.predictions for r in cfg.runs if r.predictions is not None]
    return max([p.n_classes for p in preds] + [len(r.classes or []) for r in cfg.runs], default=0)


def all_figures(table: Table) -> list[Figure]:
    from matplotlib import rc_context

    with rc_context(fonts.rc()):  # class names in any script the installed fonts cover
        return curves(table) + cost(table) + confusions(table)

