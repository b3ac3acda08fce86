"""Do two near-duplicate candidates show the same picture? Their pixels decide.

The perceptual hash (duplicates.py) sees only a coarse grey-level layout, so its
candidates are confirmed on 16x16 RGB thumbnails: Pearson correlation (brightness
and contrast changes pass) or, for noise-like textures whose fine detail a
re-encoding replaces, equal 4x4 block means. The measurement behind both
thresholds is in duplicates.py's docstring (benchmarks/duplicates_threshold.py).
"""

from __future__ import annotations

import numpy as np

MIN_CORRELATION = 0.96  # of the 16x16 RGB thumbnails of a near candidate pair, or
MAX_COARSE_DIFF = 4.0  # mean absolute difference of their 4x4 block means, in 0..255 levels


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


def similar(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two 16x16 RGB thumbnails show the same picture: their 4x4 block means
    differ by at most ``MAX_COARSE_DIFF`` levels on average, or they correlate at
    ``MIN_CORRELATION`` or more (Pearson: brightness and contrast changes pass)."""
    if a is None or b is None:
        return False
    coarse = lambda t: t.reshape(4, 4, 4, 4, -1).mean(axis=(1, 3))  # noqa: E731  16x16 -> 4x4
    if float(np.abs(coarse(a) - coarse(b)).mean()) <= MAX_COARSE_DIFF:
        return True
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    na, nb = float(a @ a), float(b @ b)
    return na > 0 and nb > 0 and float(a @ b) / np.sqrt(na * nb) >= MIN_CORRELATION
