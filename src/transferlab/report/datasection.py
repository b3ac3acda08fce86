"""The report's "Data" section: what each data set the runs trained on looked like.

One entry per data fingerprint (tag ``data_fingerprint``) among the selected runs:
images per split x class, the train imbalance ratio, the image size range and the
duplicates found across splits, read from one run's ``dataset_stats.json``
artifact (runner/datarecord.py), else from its tags (``dataset_images``,
``imbalance_ratio``, ``image_size_range``, ``duplicates``). Runs from before these
were recorded give a line saying so. MLflow client only, no TensorFlow.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transferlab.report.collect import RunRecord, _download, quiet_downloads

STATS = "dataset_stats.json"
SPLITS = ("train", "validation", "test")


def _stats(client, rec: RunRecord, tmp: Path) -> dict | None:
    try:
        with open(_download(client, rec, STATS, tmp / rec.run_id), encoding="utf-8") as fh:
            return json.load(fh)
    except Exception:  # an older run, or the artifact store unreachable: the tags remain
        return None


def _leak_pairs(pairs: dict) -> tuple[int, int]:
    """(cross-split pairs, of which with a different label) from ``counts()``-style pairs."""
    cross = [c for k, c in pairs.items() if k.split("/")[0] != k.split("/")[1]]
    return (sum(c["exact"] + c["near"] for c in cross), sum(c["different_label"] for c in cross))


def _by_reason(lines: list[str] | None, k: int = 3) -> list[tuple[str, int, list[str]]] | None:
    """``"<path>: <reason>"`` lines grouped: ``(reason, count, first k paths)``."""
    if lines is None:
        return None
    groups: dict[str, list[str]] = {}
    for line in lines:
        path, _, reason = line.partition(": ")
        groups.setdefault(reason, []).append(path)
    return [(r, len(p), p[:k]) for r, p in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))]


def _int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def sections(client, records: list[RunRecord]) -> list[dict]:
    """One dict per data fingerprint, in order of first appearance.

    Keys: ``fingerprint``, ``runs`` (how many selected runs used it), ``source``
    (``artifact`` / ``tags`` / ``none``), ``splits``, ``rows`` (``(class, [n per
    split])``, then ``("total", [...])``; empty without the artifact), ``images`` (tag text),
    ``imbalance_ratio``, ``image_sizes``, ``duplicates`` (summary text), ``policy``,
    ``dropped`` (number), ``leaks`` / ``leaks_other_label`` (pairs across splits),
    ``skipped`` (files the scan left out by reason: ``(reason, count, first paths)``,
    most frequent first; None where not recorded) and ``skipped_count`` (tag ``skipped_files``).
    Empty when no run recorded any statistics (a store from before they were logged).
    """
    groups: dict[str, list[RunRecord]] = {}
    for rec in records:
        groups.setdefault(rec.tags.get("data_fingerprint") or "(not recorded)", []).append(rec)
    out = []
    with tempfile.TemporaryDirectory(prefix="transferlab-data-") as tmp, quiet_downloads():
        for fp, recs in groups.items():
            src = next((r for r in recs if r.tags.get("dataset_images")), None)
            stats = _stats(client, src, Path(tmp)) if src is not None and src.artifact_uri else None
            t = src.tags if src is not None else {}
            entry = dict(fingerprint=fp, runs=len(recs), source="artifact" if stats else
                         ("tags" if src is not None else "none"),
                         images=t.get("dataset_images"), imbalance_ratio=t.get("imbalance_ratio"),
                         image_sizes=t.get("image_size_range"), duplicates=t.get("duplicates"),
                         policy=t.get("duplicates_policy"), dropped=t.get("duplicates_dropped"),
                         splits=[], rows=[], leaks=None, leaks_other_label=None,
                         skipped=_by_reason((stats or {}).get("skipped")),
                         skipped_count=_int(t.get("skipped_files")))
            if stats:
                splits = [s for s in SPLITS if s in stats["counts"]]
                entry["splits"] = splits
                entry["rows"] = [(c, [stats["counts"][s].get(c, 0) for s in splits]) for c in stats["classes"]]
                entry["rows"].append(("total", [stats["images"][s] for s in splits]))
                pairs = stats.get("duplicates", {}).get("pairs", {})
                entry["leaks"], entry["leaks_other_label"] = _leak_pairs(pairs)
            out.append(entry)
    return out if any(e["source"] != "none" for e in out) else []  # older stores: no section
