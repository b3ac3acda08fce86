"""Two sweeps over the same configs started at the same moment on a fresh root, while
a third process polls the store the way ``mlflow ui`` does: both finish, and every job
is trained exactly once (the sweep that finds a job RUNNING under a live owner leaves
it to that owner and says who it is)."""

import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.entities import ViewType

from conftest import ROOT, TINY
from test_sweep_e2e import PER_EPOCH, runs_of

READER = """
import sys, time
import mlflow
c = mlflow.MlflowClient(sys.argv[1])
t0 = time.time()
while time.time() - t0 < float(sys.argv[2]):
    try:
        for e in c.search_experiments():
            c.search_runs([e.experiment_id])
    except Exception as e:  # it may look before the store exists; it must not disturb it
        print("reader:", type(e).__name__, e, flush=True)
    time.sleep(0.2)
"""


@pytest.mark.slow
def test_two_sweeps_of_the_same_configs_at_once_train_each_job_once(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    cmd = [sys.executable, "run.py", "-m", *TINY, "seed=1,2", f"root_dir={tmp_path}"]
    procs = [subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path}/multirun{i}"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    reader = subprocess.Popen([sys.executable, "-c", READER, f"sqlite:///{db}", "30"], cwd=tmp_path)
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        reader.kill()
        reader.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    c = mlflow.MlflowClient(f"sqlite:///{db}")
    parents, children = runs_of(c)
    every = c.search_runs([c.get_experiment_by_name("transferlab").experiment_id], run_view_type=ViewType.ALL)
    assert len(every) == 4, [(r.data.tags.get("mlflow.runName"), r.info.status) for r in every]
    assert [r.info.status for r in parents] == ["FINISHED", "FINISHED"]
    assert sorted(r.data.params["seed"] for r in children) == ["1", "2"]  # one run per job
    for r in children:
        assert r.info.status == "FINISHED"
        for m in PER_EPOCH:
            assert [h.step for h in c.get_metric_history(r.info.run_id, m)] == [0], m
    # Each job was left to the other sweep or skipped as finished by the second one.
    trained = sum(out.count("-> MLflow run") for out in outs)
    assert trained == 2, outs
    left = sum(out.count("is running in another process") + out.count("already FINISHED") for out in outs)
    assert left == 2, outs
