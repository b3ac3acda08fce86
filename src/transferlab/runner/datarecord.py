"""A job's data on its MLflow run: duplicates found (and dropped) and dataset statistics.

Tags (the report and the MLflow UI read them): ``duplicates`` (counts per split
pair and how many carry a different label, or ``none``), ``duplicates_policy``,
``duplicates_dropped`` (drop mode), ``dataset_images``, ``dataset_classes``,
``imbalance_ratio``, ``image_size_range``. Artifacts: ``duplicates.csv`` (every
pair; when there is one) and ``dataset_stats.json`` (``data.stats.dataset_stats``
plus the duplicate counts, the dropped paths and the files the scan skipped, each
``"<path>: <reason>"``).
"""

from __future__ import annotations

import json

from transferlab.data.prepared import Prepared
from transferlab.data.stats import dataset_stats, stats_tags

STATS_ARTIFACT = "dataset_stats.json"
DUPLICATES_ARTIFACT = "duplicates.csv"


def log_dataset(c, run_id: str, prepared: Prepared) -> dict:
    """Logs the statistics and the duplicates of ``prepared`` to ``run_id``; returns the stats."""
    from mlflow.entities import RunTag

    dups = prepared.duplicates
    stats = dataset_stats(prepared.info)
    stats["duplicates"] = {"policy": prepared.mode, "threshold_bits": dups.threshold,
                           "pairs": dups.counts(), "dropped": dups.dropped}
    stats["skipped"] = list(prepared.info.skipped)  # the report's Data section lists them
    tags = stats_tags(stats)
    tags["duplicates"] = dups.summary()[:5000]
    tags["duplicates_policy"] = prepared.mode
    if prepared.mode == "drop":
        tags["duplicates_dropped"] = str(len(dups.dropped))
    c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    c.log_text(run_id, json.dumps(stats, indent=1, ensure_ascii=False) + "\n", STATS_ARTIFACT)
    if dups.pairs:
        c.log_text(run_id, dups.csv(), DUPLICATES_ARTIFACT)
    return stats
