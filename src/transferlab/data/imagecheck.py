"""One image file: can TensorFlow decode it as it is, must it be converted, or is it unusable?

Pillow answers without TensorFlow, so ``data.scan`` can sort a folder before
training starts (``tf.io.decode_image`` fails mid-epoch on a corrupt file).
What TF 2.21's ``decode_image(channels=3)`` does with each kind, measured
against Pillow (tests/test_messy_data.py keeps checking it):

- decodes correctly: JPEG in L/RGB/CMYK (also upper-case ``.JPG``), PNG in
  1/L/LA/P/RGB/RGBA and 16-bit (scaled ``v >> 8``), GIF (first frame),
  24/32-bit BMP, WebP; alpha is dropped;
- fails: TIFF, 1-bit BMP; decodes *wrongly*, without an error: palette
  BMP (the indices come out as grey levels). These are ``CONVERT``: written
  once as 8-bit RGB PNGs that TF then reads. Pillow's own ``convert("RGB")``
  is wrong for 16-bit images (it clips to 255), so ``to_rgb`` scales them.
- truncated, corrupt or not an image at all: ``SKIP``, with the reason.

``check_files`` does this for a whole data set with a cache folder: verdicts
in ``scan.json`` and converted images in ``converted/``, both keyed by path +
size + mtime, so a second scan only stats the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

OK, CONVERT, SKIP = "ok", "convert", "skip"
# Formats Pillow may identify a file as; anything else is not an image here
# (Pillow's weak-magic formats such as TGA would "open" random bytes).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
_JPEG = ("JPEG", "MPO")  # MPO: a camera's multi-picture JPEG, opened by the JPEG plugin
# (format -> modes) that tf.io.decode_image turns into the right RGB pixels.
NATIVE = {
    "JPEG": {"L", "RGB", "CMYK"},
    "MPO": {"L", "RGB", "CMYK"},
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "I;16B"},
    "GIF": {"L", "P", "RGB", "RGBA"},
    "BMP": {"RGB", "RGBA"},
    "WEBP": {"RGB", "RGBA"},
}
CACHE_DIRNAME = ".transferlab_cache"
_CACHE_VERSION = 3  # bump when check() decides differently (2: content digest; 3: phash, size)
# JPEGs are decoded at the smallest DCT scale still >= this on both sides: the
# perceptual hash resizes to 32x32 anyway, and 1/8 scale of a photo keeps the check cheap.
_PHASH_MIN_SIDE = 32
log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Verdict:
    """``kind`` is OK, CONVERT or SKIP; ``detail`` the format and mode, or why skipped."""

    kind: str
    detail: str
    digest: str = ""  # sha1 of the file's bytes ("" for skipped files)
    # 64-bit DCT perceptual hash (imagehash.phash) as 16 hex digits; "" for skipped files.
    phash: str = ""
    width: int = 0  # stored pixel size, before any EXIF rotation (0: skipped)
    height: int = 0

    def extra(self) -> dict:
        """The keyword fields beyond kind/detail/digest, as stored in ``scan.json``."""
        return {"phash": self.phash, "width": self.width, "height": self.height}


def file_digest(path: Path) -> str:
    """sha1 of a file's bytes: what the config hash and duplicate checks compare."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def perceptual_hash(im: Image.Image) -> str:
    """``imagehash.phash`` of ``im`` as 16 hex digits (64 bits; 16-bit images scaled to 8 first)."""
    import imagehash  # imports scipy.fftpack: only when a file is actually checked

    return str(imagehash.phash(to_rgb(im) if im.mode.startswith(("I", "F")) else im))


def check(path: Path) -> Verdict:
    """Opens and fully decodes ``path`` with Pillow (JPEG at 1/8 scale).

    ``Image.verify()`` alone misses truncated JPEGs and reads no pixel data,
    so every file is decoded: JPEGs with ``draft`` (libjpeg still reads every
    byte of the entropy-coded data, so truncation is caught, but skips most
    of the inverse DCT: ~0.6 ms for a 500x375 photo), other formats in full
    after ``verify()`` (which checks PNG chunk CRCs).
    The perceptual hash (duplicates.py) is taken from the decoded pixels
    while the file is open: JPEGs at the draft scale (>= 32 px a side).
    """
    path = Path(path)
    if path.name.startswith("."):
        return Verdict(SKIP, "hidden file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=FORMATS) as im:
                fmt, mode = im.format, im.mode
                size = im.size
                if fmt in _JPEG:
                    im.draft(mode, (_PHASH_MIN_SIDE, _PHASH_MIN_SIDE))
                    im.load()
                    phash = perceptual_hash(im)
                else:
                    im.verify()
            if fmt not in _JPEG:
                with Image.open(path, formats=FORMATS) as im:
                    im.load()
                    phash = perceptual_hash(im)
    except Image.UnidentifiedImageError:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return Verdict(SKIP, "corrupt (not a readable image)")
        return Verdict(SKIP, "not an image")
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        msg = str(e) or type(e).__name__
        return Verdict(SKIP, "truncated" if "truncated" in msg.lower() else f"corrupt ({msg})")
    return Verdict(OK if mode in NATIVE.get(fmt, ()) else CONVERT, f"{fmt} {mode}", file_digest(path),
                   phash=phash, width=size[0], height=size[1])


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


def convert(src: Path, dst: Path) -> None:
    """Writes ``src``'s first frame as an 8-bit RGB PNG at ``dst``, atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(src, formats=FORMATS) as im:
            rgb = to_rgb(im)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            rgb.save(f, format="PNG")
        os.replace(tmp, dst)  # parallel jobs may convert the same file: last one wins
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_cache_dir(root: Path) -> Path:
    """``$TRANSFERLAB_CACHE/<hash>``, else ``<root>/.transferlab_cache``, else
    ``~/.cache/transferlab/<hash>`` (read-only data set)."""
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    if os.environ.get("TRANSFERLAB_CACHE"):
        return Path(os.environ["TRANSFERLAB_CACHE"]) / key
    if os.access(root, os.W_OK):
        return root / CACHE_DIRNAME
    return Path.home() / ".cache" / "transferlab" / key


def _map(fn, items):
    # Pillow decodes with the GIL released: threads use the cores on big scans.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
        return list(ex.map(fn, items))


def check_files(root: Path, rels: list[str], cache: Path) -> dict[str, tuple[str, str, str, str, dict]]:
    """Verdicts of many files, converting those that need it.

    Args:
        root: The folder ``rels`` are relative to.
        rels: File paths relative to ``root``.
        cache: The cache folder (created when something is written).

    Returns:
        ``rel -> (kind, detail, source, digest, extra)``, ``source`` being the
        file TF should read: the file itself, or for CONVERT its RGB PNG in
        ``cache``; ``digest`` the sha1 of the file's bytes ("" for skipped
        files); ``extra`` the further ``Verdict`` fields by name
        (``Verdict.extra()``: ``phash``, ``width``, ``height``).

    Raises:
        OSError: A converted image could not be written.
    """
    index = cache / "scan.json"
    try:
        old = json.loads(index.read_text())
        valid = old.get("version") == _CACHE_VERSION and old.get("pillow") == PIL.__version__
        known = old["files"] if valid else {}
    except (OSError, ValueError, KeyError, AttributeError):
        known = {}
    entries, todo = {}, []
    for rel in rels:
        st = os.stat(root / rel)
        entries[rel] = [st.st_size, st.st_mtime_ns]
        if known.get(rel, [])[:2] == entries[rel]:
            entries[rel] = known[rel]
        else:
            todo.append(rel)
    for rel, v in zip(todo, _map(lambda r: check(root / r), todo)):
        entries[rel] += [v.kind, v.detail, v.digest, v.extra()]
    out, to_convert = {}, []
    for rel, (size, mtime, kind, detail, digest, extra) in entries.items():
        source = root / rel
        if kind == CONVERT:
            key = hashlib.sha1(f"{rel}|{size}|{mtime}".encode()).hexdigest()[:20]
            source = cache / "converted" / f"{key}.png"
            if not source.is_file():
                to_convert.append((root / rel, source))
        out[rel] = (kind, detail, str(source), digest, extra)
    _map(lambda a: convert(*a), to_convert)
    if entries != known:
        _prune(cache / "converted", {Path(o[2]).name for o in out.values()})
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = index.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": _CACHE_VERSION, "pillow": PIL.__version__,
                                       "files": entries}))
            os.replace(tmp, index)
        except OSError as e:  # a cache we cannot write only costs time
            log.warning("cannot write the scan cache %s: %s", index, e)
    return out


def _prune(folder: Path, keep: set[str]) -> None:
    """Removes converted images of files that changed or went away."""
    if folder.is_dir():
        for p in folder.glob("*.png"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
