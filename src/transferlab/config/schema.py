"""Typed config schema, registered in Hydra's ConfigStore: the one source of defaults.

The dataclasses are the base of ``conf/config.yaml``, so a misspelt key or a
wrong type is rejected by Hydra itself while composing. Every default value
lives here; the YAML files under ``conf/`` hold only what an option changes
(``tests/test_config.py`` fails on a YAML that repeats a default).
``runner/validate.py`` checks the values before TensorFlow is imported.

``runtime`` holds the settings that cannot change a job's numbers (where to
run, how many threads, caching, progress output): it is outside the config
hash by construction, so changing them never re-runs a finished job.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


# conf/hydra/launcher/*.yaml share names with the launcher plugins' own configs,
# so Hydra validates them against the plugins' schemas (typos are caught) and
# says so in a deprecation warning on every compose.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema",
                        category=UserWarning)


# Keys that cannot change what a job computes stay out of its hash: the runtime
# group (threads, isolation, caching, verbosity; GPU switches enter as applied
# values, see runner/job.py), where runs are recorded, and where the data lives
# (its content enters as a fingerprint instead).
NON_RESULT_KEYS = ("tracking", "runtime", "report", "root_dir", "data_dir", "name", "dataset.path")
# Keys that only mean something for dataset=synthetic (reports leave them out for folders).
SYNTHETIC_ONLY_KEYS = ("dataset.num_classes", "dataset.images_per_class", "dataset.source_size",
                       "dataset.seed", "dataset.classes")


# dataset.split=null on one folder of class folders (and the validation share carved
# from train/ when only train/ and test/ exist): train, validation, test.
DEFAULT_SPLIT = (0.8, 0.1, 0.1)


# Validation metrics every job logs per epoch: what `report.metric` may rank by.
SELECTION_METRICS = ("val_acc", "val_balanced_acc", "val_loss")


class ConfigError(ValueError):
    """A user-facing configuration error; its message says what to change."""


@dataclass
class BackboneConf:
    name: str = MISSING
    # "imagenet", null (random init) or a path to a local weights file.
    weights: Optional[str] = "imagenet"
    # Keras' constructor options (models/options.py), only for the applications that take
    # them: MobileNet alpha + depth_multiplier, MobileNetV2 alpha, MobileNetV3Small/Large
    # alpha + minimalistic. null: the application takes no such option; conf/backbone/<name>.yaml
    # sets Keras' own default (alpha 1.0, depth_multiplier 1, minimalistic false) where it does.
    alpha: Optional[float] = None
    depth_multiplier: Optional[int] = None
    minimalistic: Optional[bool] = None


@dataclass
class FreezeConf:
    strategy: str = "all"
    n: Optional[int] = None
    layer: Optional[str] = None
    # "frozen": BatchNorm layers stay non-trainable even inside the trainable
    # range (Keras' fine-tuning advice); "trainable": they follow the strategy;
    # "auto": frozen for a pretrained base, trainable for a random one (as plain Keras).
    bn: str = "auto"


@dataclass
class DatasetConf:
    name: str = MISSING
    path: Optional[str] = None
    # synthetic only: generated images, deterministic from `seed`.
    num_classes: int = 2
    images_per_class: int = 40
    source_size: int = 64
    seed: int = 0
    # synthetic only: which shapes, e.g. [ring, stripes_h] (overrides num_classes);
    # null = the first num_classes of synthetic.CLASS_SHAPES.
    classes: Optional[list[str]] = None
    # Train/validation/test fractions (data/assign.py). null: a folder holding
    # train/ validation/ test/ is used as it is; one folder of class folders is split
    # DEFAULT_SPLIT; train/ + test/ carve validation from train at the share
    # validation / (train + validation). Stratified per class, keyed on each file's
    # path hashed with `split_seed` (not `seed`: sweeping seed keeps the split).
    split: Optional[list[float]] = None
    split_seed: int = 0
    # k-fold: the pool train + validation (test held out) in `folds` stratified folds;
    # fold `fold` is validation, the others train. folds without fold: the sweep runs
    # every fold (app.py).
    folds: Optional[int] = None
    fold: Optional[int] = None
    # Exact and near duplicates across train/validation/test (data/duplicates.py):
    # warn (a WARNING line, tag and artifact), drop (remove the validation/test copies
    # before training) or error (stop before the run starts).
    duplicates: str = "warn"
    # Images with more pixels are skipped by the scan ("too large to decode: N pixels
    # (WxH) > limit"); decoding needs ~3 bytes per pixel. Pillow's own decompression-bomb
    # threshold (2 x 89,478,485); null = no limit. A result key: it decides which images
    # are kept (the data fingerprint then differs as well).
    max_image_pixels: Optional[int] = 178_956_970
    # A JPEG that decodes but lacks its end-of-image marker (data stopped early, the rest
    # zero bytes: an interrupted copy; Pillow shows its lower part grey, TensorFlow
    # refuses it): "skip" lists it as "truncated: no end-of-image marker"; "keep" trains on it.
    truncated_jpeg: str = "skip"


@dataclass
class OptimizerConf:
    name: str = "rmsprop"
    momentum: float = 0.0
    weight_decay: Optional[float] = None
    # Discriminative learning rates: trainable base layers learn at lr * this.
    backbone_lr_mult: float = 1.0


@dataclass
class SchedulerConf:
    name: str = "constant"  # constant | cosine | step, per epoch within a phase
    linear_warmup_epochs: int = 0
    step_size: int = 10  # step: lr *= gamma every step_size epochs
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine: decays towards lr * min_lr_ratio (reached one epoch past the last)


@dataclass
class AugmentConf:
    name: str = "none"
    rotation: float = 0.0  # degrees, as ImageDataGenerator's rotation_range
    width_shift: float = 0.0
    height_shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    horizontal_flip: bool = False


@dataclass
class HeadConf:
    pooling: str = "flatten"
    dropout: float = 0.0


@dataclass
class EarlyStoppingConf:
    patience: Optional[int] = None  # null = off; else stop and restore the best epoch
    monitor: str = "val_loss"


@dataclass
class TrainerConf:
    epochs: int = 10
    batch_size: int = 32
    steps_per_epoch: Optional[int] = None  # null = the whole training split each epoch
    validation_steps: Optional[int] = None  # null = the whole validation split
    # Two-phase fine-tuning: `warmup_epochs` epochs of head-only training at
    # `warmup_lr` (base frozen), then `epochs` epochs with the freeze strategy at `lr`.
    warmup_epochs: int = 0
    warmup_lr: float = 1e-3
    # null: every image counts the same; "balanced": Keras class_weight n / (k * n_c)
    # from the train split's class counts (sklearn compute_class_weight).
    class_weight: Optional[str] = None
    early_stopping: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)


@dataclass
class RuntimeConf:
    """How a job runs, never what it computes: outside the config hash."""

    verbose: int = 1  # Keras progress bars; 2 = one line per epoch, 0 = silent
    # "auto": sweep jobs run in a worker process replaced every
    # `jobs_per_process` jobs (bounded memory, see runner/isolate.py); single runs
    # in-process. "process": always a worker. "off": always in-process.
    isolate: str = "auto"
    jobs_per_process: int = 8
    # Frozen-feature caching (engine/featcache.py): "auto" trains on cached outputs of
    # the frozen layers wherever that gives the same result (tag
    # `feature_cache` says whether and why not), "on" fails where it cannot,
    # "off" never caches. null dir: <mlruns>/feature_cache.
    feature_cache: str = "auto"
    feature_cache_dir: Optional[str] = None
    # Per-epoch backups (resume); null: <root>/mlruns/backups. A folder every host of a
    # tracking-server sweep sees (NFS) lets a job killed on one host resume on another.
    backup_dir: Optional[str] = None
    # TensorFlow intra-op threads per job; null: the cores divided among the
    # launcher's parallel jobs (hydra/launcher=joblib n_jobs), else TF's default.
    threads: Optional[int] = None
    # GPU switches; skipped on a CPU-only machine (tags `precision`, `jit_compile`
    # say so). Where they take effect they change the numbers, and the job's
    # hash then records the applied values (runner/identity.py).
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    jit_compile: Optional[bool] = None  # null: Keras decides (XLA on GPU, never on CPU)
    # "mirrored": tf.distribute.MirroredStrategy over the local GPUs (CPU if none).
    strategy: str = "default"
    # After training, the classifier's inference time is measured warm on this machine
    # (metrics infer_ms_per_image_b1, infer_ms_per_step_b32, model_size_mb; engine/latency.py):
    # `latency_repeats` repetitions of `latency_batches` timed steps each, at batch 1 and 32.
    # 0 repetitions: not measured.
    latency_repeats: int = 3
    latency_batches: int = 5
    # Decoded images (uint8 at the input size, 0.15 MB per image at 224 px) stay in RAM up
    # to this many MB, else go to one file in the dataset's cache folder, shared by the
    # parallel jobs of a host and read per batch (data/store.py): same pixels either way.
    # null: a quarter of physical RAM divided by the launcher's parallel jobs.
    memory_budget_mb: Optional[float] = None


@dataclass
class TrackingConf:
    uri: Optional[str] = None
    experiment: str = "transferlab"
    artifact_root: Optional[str] = None
    skip_finished: bool = True
    # Log the trained (best) model as an MLflow model (large); needed by
    # `transferlab predict --run` and `backbone.weights=run:<id>`.
    log_model: bool = False


@dataclass
class ReportConf:
    """The sweep's own comparison report (outside the config hash)."""

    # Validation metric that ranks configurations: val_acc, val_balanced_acc, val_loss.
    metric: str = "val_acc"


@dataclass
class Config:
    backbone: BackboneConf = field(default_factory=BackboneConf)
    freeze: FreezeConf = field(default_factory=FreezeConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    augment: AugmentConf = field(default_factory=AugmentConf)
    head: HeadConf = field(default_factory=HeadConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    runtime: RuntimeConf = field(default_factory=RuntimeConf)
    report: ReportConf = field(default_factory=ReportConf)
    lr: float = 1e-4
    image_size: Optional[int] = None
    seed: int = 42
    # mlruns/ and data/ live under root_dir (resolved when the config is composed).
    root_dir: str = "${oc.env:TRANSFERLAB_ROOT,${cwd:}}"
    data_dir: str = "${root_dir}/data"
    # Filled by Hydra from experiments/*.yaml; the name ends up as a tag.
    name: Optional[str] = None


def register() -> None:
    """Registers the schema and the ``cwd`` resolver; idempotent."""
    ConfigStore.instance().store(name="transferlab_schema", node=Config)
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)


def schema_keys() -> set[str]:
    """Every dotted key of the schema (``lr``, ``trainer``, ``trainer.epochs``, ...)."""
    keys: set[str] = set()

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            keys.add(prefix + f.name)
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")

    walk(Config(), "")
    return keys
