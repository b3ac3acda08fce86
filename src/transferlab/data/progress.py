"""The one progress bar of long work on images (scanning, decoding, frozen features).

tqdm's count, rate and ETA, shown only once the work has run for 2 s; off where progress
is off (``runtime.verbose=0``) and, tqdm's own rule, where the output is not a terminal.
"""

from __future__ import annotations


def bar(desc: str, total: int | None, enabled: bool, iterable=None):
    """A tqdm bar over ``iterable`` (or updated by hand) of ``total`` images."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", delay=2.0, leave=False,
                disable=not enabled or None)
