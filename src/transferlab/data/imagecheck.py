"""One image file: does the decoder read it, and what is it (format, orientation, size)?

The verdict is the decoder's by construction: ``check`` runs ``decode.read_rgb``,
the function training, ``predict`` and export's check decode with (Pillow), so
a file the scan keeps never fails a job mid-sweep. Pillow decodes every kept
format itself (TIFF, 1-bit and palette BMP, CMYK, 16-bit included), so no file
needs converting any more (cache version 2 wrote converted PNGs for
``tf.io.decode_image``; those are gone).

- kept (``OK``): JPEG (also ``.JPG``, MPO), PNG, GIF, BMP, WebP, TIFF in any
  mode Pillow reads; the EXIF orientation tag is recorded, and the pixels are
  turned upright when decoded;
- skipped (``SKIP``), with the reason: truncated or corrupt images (also a
  JPEG whose data stops early with the rest of the file zero bytes, as an
  interrupted copy or a pre-allocating sync client leaves it: Pillow decodes
  it without an error, its lower part grey, TensorFlow's decoder refuses it;
  listed as ``truncated: no end-of-image marker`` unless
  ``dataset.truncated_jpeg=keep``), non-images,
  hidden files, dangling symlinks (``dangling symlink -> <target>``) and
  images above the pixel limit (``too large to decode: N pixels (WxH) > limit
  M; keep it with dataset.max_image_pixels=...``).

``check_files`` does this for a whole data set with a cache folder: verdicts
in ``scan.json`` keyed by path + size + mtime, so a second scan only stats the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import PIL
from PIL import Image

from transferlab.data.decode import (FORMATS, JPEG_FORMATS, ImageTooLarge, read_rgb,  # noqa: F401
                                     to_rgb)  # (re-exported)

OK, SKIP = "ok", "skip"
CACHE_DIRNAME = ".transferlab_cache"
# Bump when check() decides differently (2: verdicts carry the content digest;
# 3: one Pillow decoder, no conversions, EXIF orientation and size recorded,
# pixel limit, dangling symlinks; 4: the perceptual hash; 5: JPEGs without their
# end-of-image marker).
_CACHE_VERSION = 5
NO_EOI = "truncated: no end-of-image marker"
log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Verdict:
    """``kind`` is OK or SKIP; ``detail`` the format and mode, or why skipped.

    ``orientation`` is the EXIF orientation tag (1 = stored upright; 2-8 =
    turned when decoded); ``width``, ``height`` the stored size in pixels;
    ``phash`` the perceptual hash of the upright pixels (near duplicates).
    """

    kind: str
    detail: str
    digest: str = ""  # sha1 of the file's bytes ("" for skipped files)
    orientation: int = 1
    width: int = 0
    height: int = 0
    # 64-bit DCT perceptual hash (imagehash.phash) as 16 hex digits; "" for skipped files.
    phash: str = ""


def file_digest(path: Path) -> str:
    """sha1 of a file's bytes: what the config hash and duplicate checks compare."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def jpeg_end_missing(data: bytes) -> bool:
    """Whether a JPEG's bytes lack the end-of-image marker (``FFD9``) after its image data.

    The marker segments are walked from the start by their lengths up to the
    first start-of-scan (``FFDA``), so an EXIF thumbnail's own ``FFD9`` inside
    APP1 is not taken for the image's; in the entropy-coded data that follows,
    ``FF`` bytes are stuffed (``FF00``), so ``FFD9`` there is the end marker
    (ITU-T T.81, B.1.1). A structure this walk does not follow counts as
    complete (the decoder has accepted the file).
    """
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:  # start of scan: the image data follows
            return data.find(b"\xff\xd9", i) == -1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def check(path: Path, max_pixels: int | None = None, truncated_jpeg: str = "skip") -> Verdict:
    """Decodes ``path`` with the training decoder (``decode.read_rgb``), JPEG at 1/8 scale.

    ``Image.verify()`` alone misses truncated JPEGs and reads no pixel data,
    so every file is decoded: JPEGs with ``draft`` (~0.6 ms for a 500x375
    photo; libjpeg still reads all the entropy-coded data), other formats in
    full after ``verify()`` (which also checks PNG chunk CRCs).

    Args:
        path: The file.
        max_pixels: Images with more pixels are skipped as too large (None: no limit).
        truncated_jpeg: ``skip`` (default) or ``keep`` a JPEG that decodes but has no
            end-of-image marker (``jpeg_end_missing``).
    """
    path = Path(path)
    if path.name.startswith("."):
        return Verdict(SKIP, "hidden file")
    if path.is_symlink() and not path.exists():
        return Verdict(SKIP, f"dangling symlink -> {os.readlink(path)}")
    try:
        rgb, info = read_rgb(path, max_pixels, draft=True)  # the size limit before any decoding
        if info["format"] not in ("JPEG", "MPO"):
            with Image.open(path, formats=FORMATS) as im:
                im.verify()
    except ImageTooLarge as e:
        return Verdict(SKIP, str(e))
    except Image.UnidentifiedImageError:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return Verdict(SKIP, "corrupt (not a readable image)")
        return Verdict(SKIP, "not an image")
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        msg = str(e) or type(e).__name__
        return Verdict(SKIP, "truncated" if "truncated" in msg.lower() else f"corrupt ({msg})")
    if (truncated_jpeg != "keep" and info["format"] in JPEG_FORMATS
            and jpeg_end_missing(path.read_bytes())):
        return Verdict(SKIP, NO_EOI)
    return Verdict(OK, f"{info['format']} {info['mode']}", file_digest(path),
                   info["orientation"], info["width"], info["height"],
                   perceptual_hash(Image.fromarray(rgb)))


def perceptual_hash(im: Image.Image) -> str:
    """``imagehash.phash`` of an 8-bit image as 16 hex digits (64 bits)."""
    import imagehash  # imports scipy.fftpack: only when a file is actually checked

    return str(imagehash.phash(im))


def default_cache_dir(root: Path) -> Path:
    """``$TRANSFERLAB_CACHE/<hash>``, else ``<root>/.transferlab_cache``, else
    ``~/.cache/transferlab/<hash>`` (read-only data set)."""
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    if os.environ.get("TRANSFERLAB_CACHE"):
        return Path(os.environ["TRANSFERLAB_CACHE"]) / key
    if os.access(root, os.W_OK):
        return root / CACHE_DIRNAME
    return Path.home() / ".cache" / "transferlab" / key


def _map(fn, items, progress: bool = False, what: str = "scanning"):
    """``fn`` over ``items`` on threads (Pillow decodes with the GIL released), in order;
    a tqdm bar (count, rate, ETA) when ``progress`` and it runs longer than 2 s."""
    from transferlab.data.progress import bar

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
        return list(bar(what, len(items), progress, ex.map(fn, items)))


def _stat(path: Path) -> list:
    """[size, mtime_ns]; a dangling symlink gets the link's own, so it is listed, not fatal."""
    try:
        st = os.stat(path)
    except OSError:  # ENOENT, or ELOOP for a link to itself
        if not path.is_symlink():
            raise  # vanished since the listing: the scan says so
        st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns]


def check_files(root: Path, rels: list[str], cache: Path, max_pixels: int | None = None,
                progress: bool = False, truncated_jpeg: str = "skip") -> dict[str, Verdict]:
    """Verdicts of many files, from the cache where a file's size and mtime are unchanged.

    Args:
        root: The folder ``rels`` are relative to.
        rels: File paths relative to ``root``.
        cache: The cache folder (created when the verdicts are written).
        max_pixels: ``check``'s pixel limit; the cached verdicts are reused only
            for the same limit.
        progress: Show a progress bar when checking takes more than 2 s.
        truncated_jpeg: ``check``'s policy for JPEGs without an end marker (in the
            cache's header too: verdicts are reused only under the same policy).

    Returns:
        ``rel -> Verdict``.

    Raises:
        OSError: A file vanished between the listing and its check.
    """
    index = cache / "scan.json"
    header = {"version": _CACHE_VERSION, "pillow": PIL.__version__, "max_pixels": max_pixels,
              "truncated_jpeg": truncated_jpeg}
    known = read_cache(index, header, "files")
    entries, todo = {}, []
    for rel in rels:
        entries[rel] = _stat(root / rel)
        if known.get(rel, [])[:2] == entries[rel]:
            entries[rel] = known[rel]
        else:
            todo.append(rel)
    verdicts = _map(lambda r: check(root / r, max_pixels, truncated_jpeg), todo, progress)
    for rel, v in zip(todo, verdicts):
        entries[rel] += [v.kind, v.detail, v.digest, v.orientation, v.width, v.height, v.phash]
    if entries != known:
        write_cache(index, header, "files", entries, "scan cache")
    return {rel: Verdict(*e[2:]) for rel, e in entries.items()}


def read_cache(index: Path, header: dict, field: str) -> dict:
    """``field`` of a JSON cache file in the data set's cache folder (``write_cache``); {}
    when it is missing, unreadable or was written under another ``header``."""
    try:
        old = json.loads(index.read_text())
        return old[field] if all(old.get(k) == v for k, v in header.items()) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_cache(index: Path, header: dict, field: str, body: dict, what: str) -> None:
    """Writes ``{**header, field: body}`` to ``index`` through a temporary file (readers
    never see half a file; of parallel writers the last wins). A cache that cannot be
    written only costs time: a warning naming ``what``."""
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**header, field: body}))
        os.replace(tmp, index)
    except OSError as e:
        log.warning("cannot write the %s %s: %s", what, index, e)
