"""Shared helpers of the speed benchmarks: config composition, machine line, tables.

Every benchmark runs both sides of a comparison in one process (or one
script), back to back, repeats and keeps the best, and prints the load
average seen, since the 2-core machines here are shared.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _plain import load, table  # noqa: E402,F401 (re-exported)
from transferlab.config import register  # noqa: E402

register()


def compose(overrides, root) -> "DictConfig":  # noqa: F821
    """The job config as ``run.py`` composes it, with the store and data under ``root``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[f"root_dir={root}", *overrides])


def machine() -> str:
    """CPU model, usable cores and the load average right now."""
    import tensorflow as tf

    from transferlab.engine.latency import cpu_name

    gpus = tf.config.list_physical_devices("GPU")
    return f"{cpu_name()}, {len(gpus)} GPU(s), TF {tf.__version__}, {load()}"


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
