"""The checks a job's config passes before TensorFlow is imported.

``validate`` checks a composed config's values against the tables
(backbones, strategies, optimizers, ...) so a bad sweep fails in
milliseconds, not after TensorFlow has spent seconds importing.
Every error names the bad value, the allowed ones and the fix.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.config import ConfigError
from transferlab.config.schema import SELECTION_METRICS, schema_keys
from transferlab.models import options
from transferlab.models.freeze import STRATEGIES
from transferlab.models.freezeparams import BN_POLICIES
from transferlab.models.registry import BACKBONES, input_size, spec

OPTIMIZERS = ("rmsprop", "adam", "sgd", "adamw")
POOLINGS = ("flatten", "gap")
DATASETS = ("synthetic", "cats_dogs", "folder")
SCHEDULERS = ("constant", "cosine", "step")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
ISOLATE = ("auto", "process", "off")
FEATURE_CACHE = ("auto", "on", "off")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DUPLICATES = ("warn", "drop", "error")
TRUNCATED_JPEG = ("skip", "keep")
CLASS_WEIGHTS = ("balanced",)


def _choose(value: Any, allowed, what: str, fix: str) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown {what} {value!r}.{hint} Allowed: {', '.join(map(str, allowed))}. "
            f"Fix: {fix}"
        )


def validate(cfg: DictConfig) -> None:
    """Checks a composed config; raises ConfigError naming the bad value.

    Args:
        cfg: the composed job config (``Config`` schema).

    Raises:
        ConfigError: with the bad value, the allowed ones and the override to fix it.
    """
    _no_unknown_keys(cfg)
    _choose(cfg.backbone.name, sorted(BACKBONES), "backbone",
            "pass backbone=<name>, e.g. backbone=vgg19.")
    bb = spec(cfg.backbone.name)
    try:  # Keras' constructor options: only those the application takes, with an ImageNet file
        opts = options.resolve(cfg.backbone.name, cfg.backbone)
        if cfg.backbone.weights == "imagenet":
            options.check_imagenet(cfg.backbone.name, opts)
    except options.OptionError as e:
        raise ConfigError(str(e)) from None
    _choose(cfg.freeze.strategy, STRATEGIES, "freeze strategy",
            "pass freeze=<strategy>, e.g. freeze=all or freeze=last4.")
    _choose(cfg.freeze.bn, BN_POLICIES, "freeze.bn policy", "freeze.bn=auto.")
    _choose(cfg.optimizer.name, OPTIMIZERS, "optimizer", "optimizer=rmsprop.")
    _choose(cfg.head.pooling, POOLINGS, "head", "head=flatten or head=gap.")
    _choose(cfg.dataset.name, DATASETS, "dataset", "dataset=synthetic.")
    _choose(cfg.runtime.isolate, ISOLATE, "runtime.isolate", "runtime.isolate=auto.")
    _choose(cfg.scheduler.name, SCHEDULERS, "scheduler", "scheduler=constant.")
    _choose(cfg.runtime.strategy, ("default", "mirrored"), "runtime.strategy",
            "runtime.strategy=default or runtime.strategy=mirrored.")
    _choose(cfg.trainer.early_stopping.monitor, MONITORS, "trainer.early_stopping.monitor",
            "trainer.early_stopping.monitor=val_loss.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got lr={cfg.lr}. Fix: e.g. lr=1e-4.")
    metric = cfg.get("report", {}).get("metric", "val_acc")
    if not str(metric).startswith("val_"):  # ranking on test data would flatter the winner
        raise ConfigError(f"report.metric={metric}: configurations are ranked on validation data. "
                          "Fix: report.metric=val_acc, val_balanced_acc or val_loss.")
    if metric not in SELECTION_METRICS:  # a typo would train every job, then choose nothing
        near = difflib.get_close_matches(str(metric), SELECTION_METRICS, 1)
        raise ConfigError(f"report.metric={metric}: jobs log no such metric"
                          + (f" (did you mean {near[0]}?)" if near else "")
                          + f". Fix: report.metric={' or '.join(SELECTION_METRICS)}.")
    if not cfg.trainer.warmup_lr > 0:
        raise ConfigError(f"trainer.warmup_lr must be > 0, got {cfg.trainer.warmup_lr}.")
    if not cfg.optimizer.backbone_lr_mult > 0:
        raise ConfigError(f"optimizer.backbone_lr_mult must be > 0, got {cfg.optimizer.backbone_lr_mult}.")
    if cfg.trainer.warmup_epochs < 0:
        raise ConfigError(f"trainer.warmup_epochs must be >= 0, got {cfg.trainer.warmup_epochs}.")
    p = cfg.trainer.early_stopping.patience
    if p is not None and p < 1:
        raise ConfigError(f"trainer.early_stopping.patience must be >= 1 or null (off), got {p}.")
    s = cfg.scheduler
    if s.linear_warmup_epochs < 0 or s.step_size < 1 or not 0 < s.gamma <= 1 or not 0 <= s.min_lr_ratio <= 1:
        raise ConfigError(
            f"scheduler values out of range: linear_warmup_epochs={s.linear_warmup_epochs} (>= 0), "
            f"step_size={s.step_size} (>= 1), gamma={s.gamma} (0..1], min_lr_ratio={s.min_lr_ratio} [0..1].")
    if cfg.trainer.epochs < 1:
        raise ConfigError(f"trainer.epochs must be >= 1, got {cfg.trainer.epochs}.")
    if cfg.runtime.jobs_per_process < 1:
        raise ConfigError(f"runtime.jobs_per_process must be >= 1, got {cfg.runtime.jobs_per_process}.")
    if (cfg.runtime.memory_budget_mb or 0) < 0:
        raise ConfigError(f"runtime.memory_budget_mb must be >= 0 (0: decoded images always on disk) "
                          f"or null (a share of RAM), got {cfg.runtime.memory_budget_mb}.")
    _choose(cfg.dataset.truncated_jpeg, TRUNCATED_JPEG, "dataset.truncated_jpeg policy",
            "dataset.truncated_jpeg=skip (or keep).")
    if cfg.dataset.max_image_pixels is not None and cfg.dataset.max_image_pixels < 1:
        raise ConfigError(f"dataset.max_image_pixels must be >= 1 or null (no limit), "
                          f"got {cfg.dataset.max_image_pixels}. Fix: e.g. dataset.max_image_pixels=200000000.")
    if cfg.runtime.latency_repeats < 0 or cfg.runtime.latency_batches < 1:
        raise ConfigError(
            f"runtime.latency_repeats must be >= 0 (0: no latency measured) and runtime.latency_batches "
            f">= 1, got {cfg.runtime.latency_repeats} and {cfg.runtime.latency_batches}.")
    _validate_speed(cfg)
    if cfg.trainer.batch_size < 1:
        raise ConfigError(f"trainer.batch_size must be >= 1, got {cfg.trainer.batch_size}.")
    for key in ("steps_per_epoch", "validation_steps"):
        v = cfg.trainer[key]
        if v is not None and v < 1:
            raise ConfigError(f"trainer.{key} must be >= 1 or null (whole split), got {v}.")
    if not 0 <= cfg.head.dropout < 1:
        raise ConfigError(f"head.dropout must be in [0, 1), got {cfg.head.dropout}.")
    size = input_size(cfg)
    if size < bb.min_size:
        raise ConfigError(
            f"image_size={size} is below the minimum input size of {cfg.backbone.name} "
            f"({bb.min_size} px). Fix: image_size={bb.min_size} or larger "
            f"(its default is {bb.default_size})."
        )
    _validate_freeze(cfg, bb, options.num_layers(cfg.backbone.name, opts))
    _validate_dataset(cfg)
    w = cfg.backbone.weights
    if w is not None and str(w).startswith("run:"):  # syntax only: the run is looked up at build
        from transferlab.models.pretrained import PretrainedError, parse

        try:
            parse(w)
        except PretrainedError as e:
            raise ConfigError(str(e)) from None
    elif w not in (None, "imagenet") and not os.path.isfile(w):
        raise ConfigError(
            f"backbone.weights={w!r} is neither 'imagenet', null, run:<run id>, "
            "run:latest:<experiment> nor an existing file. "
            "Fix: backbone.weights=imagenet (download), backbone.weights=null "
            "(random init), the path to a local .h5/.weights.h5 weights file or a "
            ".keras model, or run:<id> for the backbone an earlier job trained "
            "(with tracking.log_model=true)."
        )


def _validate_speed(cfg: DictConfig) -> None:
    t = cfg.runtime
    _choose(t.feature_cache, FEATURE_CACHE, "runtime.feature_cache", "runtime.feature_cache=auto.")
    _choose(t.precision, PRECISIONS, "runtime.precision", "runtime.precision=float32.")
    if t.threads is not None and t.threads < 1:
        raise ConfigError(f"runtime.threads must be >= 1 or null (share of the cores), got {t.threads}.")
    a = cfg.augment
    if t.feature_cache == "on" and any((a.rotation, a.width_shift, a.height_shift, a.shear, a.zoom,
                                        a.horizontal_flip)):
        raise ConfigError(
            f"runtime.feature_cache=on cannot be used with augment={a.name}: augmentation runs "
            "before the frozen layers, so their output differs every epoch and cached features "
            "would change the result. Fix: augment=none, or runtime.feature_cache=auto "
            "(caches only where the result stays the same) or off.")


def _no_unknown_keys(cfg: DictConfig) -> None:
    """A key outside the schema (``+backbone.x=1``, a config built by hand) would be logged as
    a param and enter the hash while nothing reads it: refused, naming the keys that exist."""
    known = schema_keys()
    found: list[str] = []

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            found.append(prefix + str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    unknown = [k for k in found if k not in known]
    if unknown:
        k = unknown[0]
        group = k.rsplit(".", 1)[0] if "." in k else None
        siblings = sorted(x for x in known if group and x.startswith(group + ".")
                          and x.count(".") == k.count("."))
        raise ConfigError(f"Unknown config key {k!r}: nothing reads it, so a run would record a "
                          "setting that never applied."
                          + (f" Keys of {group}: {', '.join(siblings)}." if siblings else
                             f" Top-level keys: {', '.join(sorted(x for x in known if '.' not in x))}.")
                          + " Fix: drop it (python run.py --cfg job prints the whole config).")


def _validate_freeze(cfg: DictConfig, bb, num_layers: int) -> None:
    s = cfg.freeze
    if s.strategy in ("last_n", "last_blocks"):
        if s.n is None or s.n < 0:
            raise ConfigError(
                f"freeze={s.strategy} needs freeze.n >= 0 (how many "
                f"{'layers' if s.strategy == 'last_n' else 'blocks'} to train), got {s.n}."
            )
        if s.strategy == "last_n" and s.n > num_layers:
            raise ConfigError(
                f"freeze.n={s.n} is larger than {cfg.backbone.name}'s {num_layers} layers. "
                f"Fix: freeze.n between 0 and {num_layers}, or freeze=none."
            )
        if s.strategy == "last_blocks" and not bb.block_regex:
            raise ConfigError(
                f"{cfg.backbone.name}'s layer names carry no block structure, so "
                "freeze=last_blocks cannot apply. Fix: freeze=last_n freeze.n=<layers> "
                "or freeze=from_layer freeze.layer=<layer name>."
            )
    if s.strategy == "from_layer" and not s.layer:
        raise ConfigError("freeze=from_layer needs freeze.layer=<layer name of the base>.")


def _validate_split(d: DictConfig) -> None:
    """``dataset.split`` / ``split_seed`` / ``folds`` / ``fold`` (data/assign.py uses them)."""
    split = d.get("split")
    if split is not None:
        fix = "Fix: e.g. dataset.split=[0.8,0.1,0.1] (train, validation, test), or null."
        try:
            fr = [float(x) for x in split]
        except (TypeError, ValueError):
            raise ConfigError(f"dataset.split={split}: three numbers expected. {fix}") from None
        if len(fr) != 3:
            raise ConfigError(f"dataset.split={fr}: three fractions (train, validation, test) "
                              f"expected, got {len(fr)}. {fix}")
        if min(fr) < 0 or not fr[0] > 0 or not fr[1] > 0:
            raise ConfigError(f"dataset.split={fr}: every fraction must be >= 0 and train and "
                              f"validation > 0. {fix}")
        if abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"dataset.split={fr} sums to {sum(fr):g}; the fractions must sum "
                              f"to 1. {fix}")
    folds, fold = d.get("folds"), d.get("fold")
    if folds is not None and folds < 2:
        raise ConfigError(f"dataset.folds={folds}: k-fold needs at least 2 folds, or null (off). "
                          "Fix: e.g. dataset.folds=5.")
    if fold is not None and folds is None:
        raise ConfigError(f"dataset.fold={fold} needs dataset.folds=<k> (how many folds). "
                          f"Fix: e.g. dataset.folds=5 dataset.fold={fold}, or dataset.fold=null.")
    if folds is not None and fold is None:
        raise ConfigError(
            f"dataset.folds={folds} without dataset.fold: one job trains one fold. Fix: "
            f"dataset.fold=<0..{folds - 1}>, or run every fold as a sweep: "
            f"`run.py -m ... dataset.folds={folds}` or transferlab.sweep([..., "
            f"'dataset.folds={folds}']) (each fold its own run).")
    if fold is not None and not 0 <= fold < folds:
        raise ConfigError(f"dataset.fold={fold} is out of range for dataset.folds={folds}. "
                          f"Fix: dataset.fold=0..{folds - 1}.")


def _validate_dataset(cfg: DictConfig) -> None:
    d = cfg.dataset
    _validate_split(d)
    _choose(d.get("duplicates", "warn"), DUPLICATES, "dataset.duplicates",
            "dataset.duplicates=warn (report), drop (remove the validation/test copies) or error.")
    cw = cfg.trainer.get("class_weight")
    if cw is not None:
        _choose(cw, CLASS_WEIGHTS, "trainer.class_weight",
                "trainer.class_weight=balanced, or trainer.class_weight=null (every image counts the same).")
    if d.name == "synthetic":
        if not 2 <= d.num_classes <= 8:
            raise ConfigError(f"dataset.num_classes must be 2..8, got {d.num_classes}.")
        if d.images_per_class < 3:
            raise ConfigError(
                f"dataset.images_per_class must be >= 3 (one per split), got {d.images_per_class}."
            )
        return
    if not d.path:
        raise ConfigError(f"dataset={d.name} needs dataset.path=<folder with train/ validation/ test/, "
                          "train/ test/, or one sub-folder per class>.")
    path = os.path.expanduser(d.path)  # a quoted '~/...' reaches us unexpanded
    if not os.path.isdir(path):
        where = (" Put the lecture data there as {train,validation,test}/{cats,dogs}/, or "
                 "point data_dir=<folder holding cats_dogs/> at it." if d.name == "cats_dogs" else "")
        what = ("is a file, not a folder" if os.path.isfile(path) else "does not exist")
        raise ConfigError(
            f"dataset.path={d.path!r} {what}. It must be a folder holding train/, validation/ and "
            f"test/ (or train/ and test/), each with one sub-folder per class, or one sub-folder "
            f"per class (split by dataset.split).{where}"
        )
