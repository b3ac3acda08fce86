"""The jobs' error galleries and the chosen configuration's Grad-CAM, inlined in the report.

Both images are drawn by the job (runner/gallery.py: they need the trained
model); the report downloads them from MLflow: ``error_gallery.png`` of the
first run of each configuration (the ``MAX_CONFIGS`` best by the selection
metric, so a 200-run report stays small), with its most confused class
pairs in the caption, and ``gradcam.png`` of the chosen configuration.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from transferlab.report.collect import _download, quiet_downloads
from transferlab.report.confusion import top_confusions
from transferlab.report.metric import rank_key
from transferlab.report.plots import Figure
from transferlab.report.table import Config, Table, config_label

MAX_CONFIGS = 12
ERRORS = "error_gallery.png"
GRADCAM = "gradcam.png"


def _png(client, rec, name: str, tmp: Path) -> bytes | None:
    try:
        return Path(_download(client, rec, name, tmp / rec.run_id)).read_bytes()
    except Exception:
        return None  # older runs have none: nothing to show


def _pairs(cfg: Config, n: int = 3) -> str:
    preds = [r.predictions for r in cfg.runs if r.predictions is not None]
    if not preds:
        return ""
    names = next((r.classes for r in cfg.runs if r.classes), None) or []
    k = max([p.n_classes for p in preds] + [len(names)])
    names = names if len(names) >= k else [str(i) for i in range(k)]
    top = top_confusions(np.concatenate([p.true for p in preds]),
                         np.concatenate([p.pred for p in preds]), names, n)
    return "; ".join(f"{a} → {b} ({c})" for a, b, c, _ in top)


def figures(client, table: Table, chosen: Config | None) -> list[Figure]:
    """Error galleries (best configurations first), then the chosen one's Grad-CAM."""
    ranked = sorted((c for c in table.configs if c.runs),
                    key=lambda c: rank_key(c.score, table.metric))[:MAX_CONFIGS]
    out = []
    with tempfile.TemporaryDirectory(prefix="transferlab-gallery-") as tmp, quiet_downloads():
        tmp = Path(tmp)
        for i, cfg in enumerate(ranked):
            rec = cfg.runs[0]
            png = _png(client, rec, ERRORS, tmp)
            if png is None:
                continue
            label = config_label(cfg, table.axes) or "all runs"
            pairs = _pairs(cfg)
            out.append(Figure(f"errors-{i}", f"Errors: {label}",
                              f"Run {rec.name}: its highest-loss test images (true class, "
                              "predicted class and its probability)."
                              + (f" Most confused over all seeds: {pairs}." if pairs else ""),
                              png))
        if chosen is not None and chosen.runs:
            rec = chosen.runs[0]
            png = _png(client, rec, GRADCAM, tmp)
            if png is not None:
                out.append(Figure("gradcam", "Grad-CAM of the chosen configuration: "
                                  + (config_label(chosen, table.axes) or "all runs"),
                                  f"Run {rec.name}: where the backbone's output drives the "
                                  "predicted class, on its two highest-loss and two most "
                                  "confidently right test images.", png))
    return out
