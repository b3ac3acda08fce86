"""dataset.duplicates through a real job: what the run records, what drop trains on, what error stops."""

import json
from pathlib import Path

import mlflow
import pytest

from conftest import TINY
from test_duplicates import leaky_folder
from transferlab import data
from transferlab.runner import job


def _client(tmp_path):
    return mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def test_warn_job_records_duplicates_stats_and_class_weight(compose, tmp_path):
    root = leaky_folder(tmp_path / "leaky")
    out = job.run(compose([*TINY, "dataset=folder", f"dataset.path={root}",
                           "trainer.class_weight=balanced", "runtime.latency_repeats=0"]))
    c = _client(tmp_path)
    r = c.get_run(out["run_id"])
    t = r.data.tags
    assert t["duplicates"] == ("train/validation: 1 exact + 0 near; train/test: 0 exact + 2 near "
                               "(1 with a different label); within train: 1 exact + 0 near")
    assert t["duplicates_policy"] == "warn" and "duplicates_dropped" not in t
    assert t["dataset_images"] == "train 9 · validation 3 · test 4" and t["imbalance_ratio"] == "1.25"
    assert t["image_size_range"] == "48-64 x 36-48"
    assert t["class_weight"] == "balanced: a 0.9, b 1.125" and r.data.params["trainer.class_weight"] == "balanced"
    listed = Path(c.download_artifacts(out["run_id"], "duplicates.csv", str(tmp_path)))
    assert listed.read_text() == data.duplicates.find(data.scan(root)).csv()
    st = json.loads(Path(c.download_artifacts(out["run_id"], "dataset_stats.json", str(tmp_path))).read_text())
    assert st["counts"]["train"] == {"a": 5, "b": 4} and st["fingerprint"] == t["data_fingerprint"]


def test_error_job_stops_before_a_run_exists(compose, tmp_path):
    root = leaky_folder(tmp_path / "leaky")
    with pytest.raises(data.DataError, match="dataset.duplicates=error: 3 image pair"):
        job.run(compose([*TINY, "dataset=folder", f"dataset.path={root}", "dataset.duplicates=error"]))
    db = tmp_path / "mlruns" / "mlflow.db"
    assert not db.exists() or not _client(tmp_path).search_runs(
        [e.experiment_id for e in _client(tmp_path).search_experiments()])


@pytest.mark.slow
def test_drop_job_trains_and_scores_without_the_copies(compose, tmp_path):
    root = leaky_folder(tmp_path / "leaky")
    out = job.run(compose([*TINY, "dataset=folder", f"dataset.path={root}", "dataset.duplicates=drop",
                           "runtime.latency_repeats=0"]))
    r = _client(tmp_path).get_run(out["run_id"])
    assert r.data.metrics["test_images"] == 2 and r.data.tags["duplicates_dropped"] == "3"
    assert r.data.tags["dataset_images"] == "train 9 · validation 2 · test 2"
    assert r.data.tags["data_fingerprint"] != data.scan(root).fingerprint()


def test_sweep_with_a_leak_and_error_mode_stops_before_any_job(tmp_path):
    """run.py -m ... dataset.duplicates=error: the sweep's preflight names the pairs, exits
    non-zero before TensorFlow is imported and before the store exists."""
    import subprocess
    import sys

    from conftest import ROOT

    root = leaky_folder(tmp_path / "leaky")
    code = (
        "import sys, runpy; sys.argv = ['run.py', '-m', 'lr=1e-3,1e-4', 'backbone.weights=null', "
        f"'dataset=folder', 'dataset.path={root}', 'dataset.duplicates=error', 'root_dir={tmp_path}']\n"
        "try:\n    runpy.run_path('run.py', run_name='__main__')\n"
        "finally:\n    print('TF_LOADED', 'tensorflow' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "dataset.duplicates=error: 3 image pair(s)" in out and "TF_LOADED False" in out
    assert not (tmp_path / "mlruns").exists()
