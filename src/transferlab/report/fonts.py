"""Class names on figures: drawn in a font that has their glyphs, else listed by index.

Matplotlib's default font (DejaVu Sans) has no CJK glyphs: a class folder
named ``猫 ねこ`` would be drawn as empty boxes with a warning per glyph.
Where a CJK font is installed (``make fonts``: Debian's fonts-noto-cjk;
WenQuanYi or Droid Sans Fallback work too) matplotlib falls back to it glyph
by glyph (``font.family`` as a list, matplotlib >= 3.6). A name that no
installed font can draw is shown as ``#<index>`` and the figure's caption or
the report lists index -> name, so nothing is drawn as boxes.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

BASE = "DejaVu Sans"
FALLBACKS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
             "Source Han Sans", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
             "Droid Sans Fallback")
MAX_LEN = 18  # characters of a tick label; longer names are cut with an ellipsis


@lru_cache(maxsize=1)
def families() -> tuple[str, ...]:
    """DejaVu Sans, then every installed fallback font family, in preference order."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    # one fallback is enough (each Noto CJK face covers Han, kana and Hangul) and each
    # one more costs loading a 20 MB font collection
    return (BASE, *[f for f in FALLBACKS if f in installed][:1])


@lru_cache(maxsize=1)
def _faces():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    paths = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    return [FT2Font(paths[name]) for name in families() if name in paths]


def rc() -> dict:
    """``matplotlib.rc_context`` settings: fall back glyph by glyph through ``families()``."""
    return {"font.family": list(families())}


@lru_cache(maxsize=4096)
def drawable(text: str) -> bool:
    """True when every visible character of ``text`` has a glyph in one of the fonts."""
    faces = _faces()
    return all(ch.isspace() or any(f.get_char_index(ord(ch)) for f in faces) for ch in text)


def clean(name: str, max_len: int = MAX_LEN) -> str:
    """``name`` on one line (control characters as spaces), cut to ``max_len`` characters."""
    s = "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(name)).strip()
    return s if len(s) <= max_len else s[: max_len - 1] + "…"


def labels(names: list[str], max_len: int = MAX_LEN) -> tuple[list[str], list[int]]:
    """Tick labels for class names, and the indices shown as ``#i`` (no font draws them)."""
    out, by_index = [], []
    for i, name in enumerate(names):
        text = clean(name, max_len)
        if text and drawable(text):
            out.append(text)
        else:
            out.append(f"#{i}")
            by_index.append(i)
    return out, by_index
