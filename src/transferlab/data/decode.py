"""The one image decoder: scan, training, validation, test, ``predict`` and export's check.

``read_rgb`` opens a file with Pillow and returns what a photo viewer shows:
the first frame, turned upright by its EXIF orientation tag
(``ImageOps.exif_transpose``), as 8-bit RGB (alpha dropped, 16-bit scaled to
8 bits by ``to_rgb``, palette / 1-bit / CMYK / TIFF converted). Since the scan
(imagecheck.check) calls this same function, a file the scan keeps is one the
training pipeline decodes: the verdicts and the decoder cannot disagree.

For the formats TensorFlow decodes natively (JPEG, PNG, GIF, BMP, WebP) the
pixels equal ``tf.io.decode_image``'s (tests/test_messy_data.py checks it), so
nothing moves against Keras' own ``image_dataset_from_directory`` — except
that EXIF orientation is honoured, which Keras' loader ignores.

Image size: ``max_pixels`` (``dataset.max_image_pixels``) replaces Pillow's
decompression-bomb guard, with a message that says what the file is. The
limit is checked from the header, before any pixel is decoded. Pillow's own
guard (``Image.MAX_IMAGE_PIXELS``) is switched off for this reason when this
module is imported: it would refuse a file the user allowed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Bumped when read_rgb's pixels change: keys the on-disk image stores (data/store.py).
DECODER_VERSION = 1
# Formats Pillow may identify a file as; anything else is not an image here
# (Pillow's weak-magic formats such as TGA would "open" random bytes).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera's multi-picture JPEG, opened by the JPEG plugin
ORIENTATION_TAG = 0x0112
# Our own limit (checked before decoding) replaces Pillow's decompression-bomb guard.
Image.MAX_IMAGE_PIXELS = None


class ImageTooLarge(ValueError):
    """The image has more pixels than the limit; the message says how to keep it."""


def orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 = stored upright), 1 when absent or invalid."""
    try:
        value = int(im.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block: Pillow shows the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def too_large_message(width: int, height: int, limit: int) -> str:
    return (f"too large to decode: {width * height:,} pixels ({width}x{height}) > limit "
            f"{limit:,}; keep it with dataset.max_image_pixels={width * height} (or null: "
            "no limit; decoding needs ~3 bytes per pixel) or downscale the file")


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB pixels of ``im`` as TF would give them: alpha dropped, 16 bits -> 8."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255):
            a = np.floor(a / 256.0)  # 16-bit: the high byte, as libpng's strip_16
        elif im.mode == "F" and a.max() <= 1.0:
            a = a * 255.0  # float images in 0..1
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # no Pillow warning; alpha is dropped next
    return im.convert("RGB")


DRAFT_MIN_SIDE = 32


def read_rgb(path, max_pixels: int | None = None, *, draft: bool = False):
    """Decodes one image file as a photo viewer shows it.

    Args:
        path: The image file (str or Path).
        max_pixels: Refuse images with more pixels than this (None: no limit).
        draft: JPEG only: decode at down to 1/8 scale, >= 32 px a side (the scan's check: libjpeg still
            reads every byte of the entropy-coded data, so truncation is
            caught, but skips most of the inverse DCT). Never used for pixels
            a model sees.

    Returns:
        ``(rgb, info)``: ``rgb`` a uint8 array of shape (height, width, 3) after
        the EXIF rotation; ``info`` a dict with ``format``, ``mode`` (as
        stored), ``orientation`` (the EXIF tag, 1 = upright) and ``width``,
        ``height`` (as stored, before the rotation).

    Raises:
        ImageTooLarge: more pixels than ``max_pixels``.
        PIL.UnidentifiedImageError: not an image of ``FORMATS``.
        OSError, SyntaxError, ValueError, ...: truncated or corrupt (Pillow's errors).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings on odd but readable files
        with Image.open(Path(path), formats=FORMATS) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLarge(too_large_message(w, h, max_pixels))
            info = {"format": im.format, "mode": im.mode, "orientation": orientation(im),
                    "width": w, "height": h}
            if draft and im.format in JPEG_FORMATS:
                # the smallest DCT scale that keeps >= 32 px a side: the perceptual hash
                # (data/duplicates.py) resizes to 32x32, so a 1/8 draft of a small JPEG
                # (40 px -> 5 px) would hash nothing.
                im.draft(im.mode, (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE))
            im.load()
            upright = ImageOps.exif_transpose(im) if info["orientation"] != 1 else im
            rgb = to_rgb(upright)
    return np.asarray(rgb, dtype=np.uint8), info
