"""Synthetic image-classification data: one shape or texture per class.

Written as ordinary image files in the layout of real datasets, so they go
through the same loader (``transferlab.data``). Same arguments, same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.data.folder import SPLITS

try:  # POSIX only; elsewhere concurrent generators are not serialised.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

# Ordered so that every prefix is learnable: circle vs cross (the default
# binary task) is harder than it looks but a tiny CNN beats chance clearly.
CLASS_SHAPES = ("circle", "cross", "ring", "square", "stripes_h", "triangle", "checker", "stripes_v")
_TEXTURES = ("stripes_h", "stripes_v", "checker")
_VERSION = 1  # bump when the drawing changes: old folders are then regenerated
_SUPERSAMPLE = 4  # draw at 4x and average: anti-aliased edges even at 32 px


def _coverage(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Fraction (0..1) of each pixel covered by the foreground of ``shape``."""
    n = size * _SUPERSAMPLE
    c = (np.arange(n) + 0.5) / n  # pixel centres in units of the image side
    y, x = np.meshgrid(c, c, indexing="ij")
    # Every class covers the same random fraction of the image: with fg and bg
    # exchangeable, the mean colour and its spread carry no class information.
    area, f = rng.uniform(0.08, 0.22), rng.uniform(0.25, 0.4)  # f: relative thickness
    unit = {"circle": np.pi, "ring": np.pi * (2 * f - f * f), "square": 2.0,
            "triangle": 3 * np.sqrt(3) / 4, "cross": 8 * f - 4 * f * f}.get(shape, np.pi / 2)
    r = np.sqrt(area / unit)  # circumradius giving that area (unit: area at r=1)
    cx, cy = rng.uniform(1.1 * r, 1 - 1.1 * r, 2)
    # Textures only tilt a little, so horizontal and vertical stripes stay distinct.
    angle = rng.uniform(-0.25, 0.25) if shape in _TEXTURES else rng.uniform(0, 2 * np.pi)
    period = rng.uniform(0.14, 0.26)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)  # the shape's own frame
    v = (y - cy) * np.cos(angle) - (x - cx) * np.sin(angle)
    if shape == "circle":
        m = u**2 + v**2 < r**2
    elif shape == "ring":
        m = np.abs(np.hypot(u, v) - r * (1 - f / 2)) < r * f / 2
    elif shape == "square":
        m = np.maximum(np.abs(u), np.abs(v)) < r / np.sqrt(2)
    elif shape == "triangle":  # equilateral: three half-planes at the inradius r/2
        a = np.pi / 2 + 2 * np.pi / 3 * np.arange(3)[:, None, None]
        m = np.all(u * np.cos(a) + v * np.sin(a) < r / 2, axis=0)
    elif shape == "cross":
        t = r * f
        m = ((np.abs(u) < t) & (np.abs(v) < r)) | ((np.abs(v) < t) & (np.abs(u) < r))
    else:  # a textured disc, half of it foreground; the phase is random
        w = rng.uniform(0, period, 2)
        sv, su = np.floor((v + w[0]) / period * 2), np.floor((u + w[1]) / period * 2)
        pattern = {"stripes_h": sv, "stripes_v": su}.get(shape, sv + su) % 2 == 0
        m = pattern & (u**2 + v**2 < r**2)
    return m.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))


def _render(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image: random colours, the shape's coverage, pixel noise."""
    # One dark and one light colour (clear edges in every channel); which is
    # the foreground is a coin flip, so fg and bg share one distribution.
    dark, light = rng.uniform(0, 110, 3), rng.uniform(145, 255, 3)
    fg, bg = (dark, light) if rng.random() < 0.5 else (light, dark)
    m = _coverage(shape, size, rng)[..., None]
    img = bg + m * (fg - bg) + rng.normal(0, 8, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def select_classes(classes) -> tuple[str, ...]:
    """Checks a choice of shapes; returns them in ``CLASS_SHAPES`` order.

    Raises:
        ValueError: fewer than 2, a repeated or an unknown name (the message lists the allowed).
    """
    names = [str(c) for c in classes]
    unknown = [c for c in names if c not in CLASS_SHAPES]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"classes must be 2..{len(CLASS_SHAPES)} distinct names of "
                         f"{', '.join(CLASS_SHAPES)}; got {names}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return tuple(c for c in CLASS_SHAPES if c in names)


def generate(out_dir, num_classes: int = 2, images_per_class: int = 30, size: int = 64,
             seed: int = 0, fmt: str = "png", classes=None) -> Path:
    """Writes the synthetic dataset, unless ``out_dir`` already holds it.

    Args:
        out_dir: Folder to fill with ``{train,validation,test}/<class>/<class>_<i>.<fmt>``.
        num_classes: 2..8; class k draws ``CLASS_SHAPES[k]``.
        classes: instead of the first ``num_classes``, these shapes (names of
            ``CLASS_SHAPES``, any order; ``num_classes`` is then ignored). A
            shape's images are the same whichever others are chosen.
        images_per_class: >= 3; split 60/20/20 (at least one per split).
        size: Image side length in pixels (>= 8).
        seed: Seeds every random draw; same arguments give byte-identical files.
        fmt: "png" or "jpg".

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: An argument is out of range.
        OSError: ``out_dir`` cannot be written.
    """
    if classes is not None:
        shapes = select_classes(classes)
    elif not 2 <= num_classes <= len(CLASS_SHAPES):
        raise ValueError(f"num_classes must be 2..{len(CLASS_SHAPES)}, got {num_classes}")
    else:
        shapes = CLASS_SHAPES[:num_classes]
    if images_per_class < 3 or size < 8 or seed < 0 or fmt not in ("png", "jpg"):
        raise ValueError(f"need images_per_class >= 3, size >= 8, seed >= 0, fmt png|jpg; "
                         f"got {images_per_class}, {size}, {seed}, {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = dict(version=_VERSION, num_classes=int(num_classes), fmt=fmt, size=int(size),
                images_per_class=int(images_per_class), seed=int(seed))
    if classes is not None:
        args.update(num_classes=len(shapes), classes=list(shapes))
    marker = out / ".complete.json"
    with open(out / ".lock", "a") as lock:  # parallel sweep jobs share the folder
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and json.loads(marker.read_text()) == args:
            return out  # written last and atomically: the folder is complete
        # Marker first: an interrupted rewrite must never look complete.
        marker.unlink(missing_ok=True)
        for split in SPLITS:
            if (out / split).exists():
                shutil.rmtree(out / split)
        n_held = max(1, int(images_per_class * 0.2 + 0.5))  # validation and test each
        n_train = images_per_class - 2 * n_held
        for name in shapes:
            k = CLASS_SHAPES.index(name)  # the shape's own stream, whatever else is chosen
            for i in range(images_per_class):
                split = SPLITS[0 if i < n_train else 1 if i < n_train + n_held else 2]
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                # One stream per image: image (k, i) does not depend on the others.
                img = _render(name, size, np.random.default_rng([seed, k, i]))
                Image.fromarray(img).save(folder / f"{name}_{i}.{fmt}",
                                          **({"quality": 95} if fmt == "jpg" else {}))
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(args, sort_keys=True))
        os.replace(tmp, marker)
    return out
