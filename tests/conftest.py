"""Shared fixtures: Hydra compose API over conf/, tiny offline settings."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# Subprocesses (run.py, workers) import this checkout's src/ too, not whatever
# checkout an editable install of the environment points at.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from transferlab.config import register  # noqa: E402

register()

# Settings that keep a job to seconds on 2 CPU cores, with no download.
TINY = [
    "backbone=mobilenetv3small",
    "backbone.weights=null",
    "image_size=32",
    "trainer.epochs=1",
    "trainer.batch_size=8",
    "runtime.verbose=0",
    "dataset.images_per_class=10",
    "dataset.source_size=32",
]


@pytest.fixture
def compose(tmp_path):
    """compose(overrides) -> DictConfig, with root_dir in tmp (store and data there)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(overrides=(), root=tmp_path):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=[f"root_dir={root}", *overrides])

    return _compose
