"""Data: scan a folder of class sub-folders, generate synthetic sets, build tf.data splits.

``prepare(cfg)`` = ``scan`` + the ``dataset.duplicates`` policy: what callers use.

Nothing here imports TensorFlow at module level (``load`` imports it when called).
"""

from __future__ import annotations

from pathlib import Path

from transferlab.data.assign import SplitSpec
from transferlab.data.folder import SPLITS, DataError, DatasetInfo, Entry, Splits, scan
from transferlab.data.pipeline import load
from transferlab.data.prepared import Prepared, prepare

__all__ = ["SPLITS", "DataError", "DatasetInfo", "Entry", "SplitSpec", "Splits", "load", "scan",
           "scan_job", "dataset_path", "Prepared", "prepare"]


def scan_job(cfg) -> DatasetInfo:
    """``scan`` of a job's data folder with the job's split (``dataset.split``, ``split_seed``,
    ``folds``, ``fold``) and settings (pixel limit, ``truncated_jpeg``; progress unless
    ``runtime.verbose=0``);
    generates the synthetic set when needed."""
    from transferlab.data.folder import _DEFAULT  # configs logged before the key existed

    return scan(dataset_path(cfg), split=SplitSpec.from_config(cfg.dataset),
                max_pixels=cfg.dataset.get("max_image_pixels", _DEFAULT),
                truncated_jpeg=cfg.dataset.get("truncated_jpeg", "skip"),
                progress=bool(cfg.get("runtime", {}).get("verbose", 1)))


def dataset_path(cfg) -> Path:
    """The data folder of a job, generating the synthetic set when needed.

    Synthetic sets live in ``<data_dir>/synthetic/<classes>_n<images>_px<size>_seed<seed>``
    where ``<classes>`` is ``c<num_classes>`` (the first shapes) or the chosen
    ``dataset.classes`` joined by ``-`` (e.g. ``ring-stripes_h``).

    Raises:
        ConfigError: ``dataset.classes`` names an unknown shape, repeats one or has < 2.
    """
    d = cfg.dataset
    if d.name != "synthetic":
        return Path(d.path).expanduser()
    from transferlab.data import synthetic

    classes = d.get("classes")
    if classes is not None:
        try:
            classes = synthetic.select_classes(classes)
        except ValueError as e:
            from transferlab.config import ConfigError

            raise ConfigError(f"dataset.classes: {e}. Fix: e.g. dataset.classes=[ring,stripes_h], "
                              "or dataset.classes=null for the first dataset.num_classes shapes.") from None
    which = "-".join(classes) if classes else f"c{d.num_classes}"
    out = Path(cfg.data_dir) / "synthetic" / (
        f"{which}_n{d.images_per_class}_px{d.source_size}_seed{d.seed}")
    return synthetic.generate(out, d.num_classes, d.images_per_class, d.source_size, d.seed,
                              classes=classes)
