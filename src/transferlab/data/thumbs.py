"""Do two near-duplicate candidates show the same picture? Their pixels decide.

The perceptual hash (duplicates.py) sees only a coarse grey-level layout, so its
candidates are confirmed on 16x16 RGB thumbnails: Pearson correlation (brightness
and contrast changes pass) or, for noise-like textures whose fine detail a
re-encoding replaces, equal 4x4 block means. The measurement behind both
thresholds is in duplicates.py's docstring (benchmarks/duplicates_threshold.py).

Confirming means reading both files again (~2 ms each), and every job of a sweep
looks for duplicates: ``confirm`` keeps its verdicts in the data set's cache
folder (``near_verdicts.json``), keyed by the two files' content digests, so a
pair is read once per data set, whichever job, split or fold asks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_CORRELATION = 0.96  # of the 16x16 RGB thumbnails of a near candidate pair, or
MAX_COARSE_DIFF = 4.0  # mean absolute difference of their 4x4 block means, in 0..255 levels
MIN_CHANNEL_STD = 4.0  # a channel varying less (levels) in either thumbnail has no say
MAX_GAIN_RATIO = 1.25  # brightness/contrast edits scale every channel alike; look-alikes do not
VERDICTS = "near_verdicts.json"


def thumbnail(path: str) -> np.ndarray | None:
    """16x16 RGB float thumbnail of an image file as the decoder sees it (upright, JPEG at a
    reduced DCT scale, box filter); None if it cannot be read."""
    from PIL import Image

    from transferlab.data.decode import read_rgb

    try:
        rgb, _ = read_rgb(path, None, draft=True)
        return np.asarray(Image.fromarray(rgb).resize((16, 16), Image.Resampling.BOX), dtype=np.float64)
    except (OSError, ValueError, SyntaxError):
        return None  # changed since the scan: not confirmed


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    na, nb = float(a @ a), float(b @ b)
    return float(a @ b) / np.sqrt(na * nb) if na > 0 and nb > 0 else None


def similar(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two 16x16 RGB thumbnails show the same picture: their 4x4 block means
    differ by at most ``MAX_COARSE_DIFF`` levels on average, or they correlate at
    ``MIN_CORRELATION`` or more (Pearson: brightness and contrast changes pass) over
    all three channels and in each channel that varies (``MIN_CHANNEL_STD`` levels), with
    the channels' gains (ratios of standard deviations) within ``MAX_GAIN_RATIO`` of each other.

    The per-channel tests keep apart pictures that only share a layout: the same green
    square on a dark blue and on a dark red background correlate at 0.98 over the
    channels, yet one edit of the brightness or contrast scales every channel alike,
    and going from one background to the other does not. benchmarks/
    duplicates_threshold.py, 2026-11-30: among 180 such "look-alikes" (one shape per
    class, random dark background and size) 578 distinct pairs were confirmed before,
    72 after (32 of them with backgrounds within a few levels: the coarse test); every
    kind of copy is found as before but for 4% crops (smooth scenes 12% -> 0%). A gain
    ratio of 1.1 left 51 but missed 4-5% of copies brightened by 10 levels (clipping).
    """
    if a is None or b is None:
        return False
    coarse = lambda t: t.reshape(4, 4, 4, 4, -1).mean(axis=(1, 3))  # noqa: E731  16x16 -> 4x4
    if float(np.abs(coarse(a) - coarse(b)).mean()) <= MAX_COARSE_DIFF:
        return True
    r = _corr(a, b)
    if r is None or r < MIN_CORRELATION:
        return False
    gains = []
    for c in range(a.shape[-1]):
        x, y = a[..., c].ravel(), b[..., c].ravel()
        if max(x.std(), y.std()) < MIN_CHANNEL_STD:
            continue  # flat in both: nothing to compare
        if (_corr(x, y) or 0.0) < MIN_CORRELATION:
            return False  # includes a channel flat in one picture and varying in the other
        gains.append(float(y.std() / x.std()))
    return not gains or max(gains) / min(gains) <= MAX_GAIN_RATIO


def confirm(pairs: list[tuple[tuple[str, str], tuple[str, str]]], cache: Path | None) -> np.ndarray:
    """``similar`` for each candidate pair, each file read at most once.

    Args:
        pairs: ``((source_a, digest_a), (source_b, digest_b))`` per candidate: the
            files and the sha1 of their bytes (the scan's ``Entry.digest``).
        cache: Folder of ``near_verdicts.json`` (verdicts of earlier calls, keyed by
            the digests, the two thresholds and Pillow's version); None: no cache. A cache that
            cannot be read or written only costs the time to read the files.

    Returns:
        bool array of shape ``(len(pairs),)``.
    """
    import PIL

    header = {"min_correlation": MIN_CORRELATION, "max_coarse_diff": MAX_COARSE_DIFF,
              "min_channel_std": MIN_CHANNEL_STD, "max_gain_ratio": MAX_GAIN_RATIO,
              "pillow": PIL.__version__}  # another decoder may give other thumbnails
    from transferlab.data.imagecheck import read_cache, write_cache

    index = Path(cache) / VERDICTS if cache else None
    known: dict[str, bool] = read_cache(index, header, "verdicts") if index is not None else {}
    keys = [":".join(sorted((a[1], b[1]))) if a[1] and b[1] else "" for a, b in pairs]
    thumbs: dict[str, np.ndarray | None] = {}
    out, new = np.zeros(len(pairs), bool), {}
    for k, ((sa, _), (sb, _)) in enumerate(pairs):
        if keys[k] in known:
            out[k] = known[keys[k]]
            continue
        for s in (sa, sb):
            if s not in thumbs:
                thumbs[s] = thumbnail(s)
        out[k] = similar(thumbs[sa], thumbs[sb])
        if keys[k] and thumbs[sa] is not None and thumbs[sb] is not None:  # unreadable: ask again
            new[keys[k]] = bool(out[k])
    if index is not None and new:  # parallel jobs: the last writer wins; a lost verdict is recomputed
        write_cache(index, header, "verdicts", {**known, **new}, "duplicate cache")
    return out
