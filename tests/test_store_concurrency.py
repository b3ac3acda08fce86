"""A fresh SQLite store opened by several processes at once: one creates the schema,
the others wait for it (runner/store.py).

Without that, two sweeps started together on a fresh root failed in 5 of 5
tries (``duplicate column name: step``, Alembic errors), and a ``mlflow ui``
opened while a sweep created the store killed the sweep ("Online migration
expected to match one row"). Two processes open the store as a sweep does
(schema, experiment, parent run, a logged metric) at the same moment, five
times on five fresh roots (a barrier per try; one import of MLflow for all
tries), while a third process polls each store through a plain
``MlflowClient``, as ``mlflow ui`` does, from a different moment of the
creation in each try.
"""

import os
import subprocess
import sys
import time

import mlflow
from mlflow.entities import ViewType

from conftest import ROOT

TRIES = 5
READER_DELAY = [None, 0.0, 0.3, 1.0, 2.0]  # seconds after the two sweeps start

SWEEP = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from transferlab.runner import tracking
base, me = Path(sys.argv[1]), sys.argv[2]
for i in range(int(sys.argv[3])):
    while not (base / f"go{i}").exists():
        time.sleep(0.005)
    t0 = time.time()
    try:
        cfg = OmegaConf.create({"root_dir": str(base / f"try{i}"),
                                "tracking": {"uri": None, "experiment": "transferlab", "artifact_root": None}})
        parent = tracking.start_sweep(cfg, f"{me}-{i}", None)
        c = tracking.client(tracking.tracking_uri(cfg))
        c.log_metric(parent, "loss", 1.0, step=0)
        c.set_terminated(parent, "FINISHED")
        print(f"try {i}: ok {time.time() - t0:.1f}s", flush=True)
    except Exception as e:
        print(f"try {i}: {type(e).__name__}: {e}", flush=True)
    (base / f"done{i}-{me}").touch()
"""

READER = """
import sys, time
from pathlib import Path
import mlflow
base, delays = Path(sys.argv[1]), sys.argv[2].split(",")
for i, d in enumerate(delays):
    while not (base / f"go{i}").exists():
        time.sleep(0.005)
    if d != "None":
        time.sleep(float(d))
        c = mlflow.MlflowClient(f"sqlite:///{base}/try{i}/mlruns/mlflow.db")
        t0 = time.time()
        try:
            while time.time() - t0 < 1.5:
                for e in c.search_experiments():
                    c.search_runs([e.experiment_id])
                time.sleep(0.05)
        except Exception as e:
            print(f"reader, try {i}: {type(e).__name__}: {e}", flush=True)
    (base / f"done{i}-reader").touch()
"""


def test_two_sweeps_and_a_reader_open_a_fresh_store_at_once_five_times(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP, str(tmp_path), f"s{k}", str(TRIES)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in range(2)]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), ",".join(map(str, READER_DELAY))],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for i in range(TRIES):
            (tmp_path / f"go{i}").touch()  # both sweeps open a fresh store now
            deadline = time.time() + 120
            while len(list(tmp_path.glob(f"done{i}-*"))) < 3 and time.time() < deadline:
                if any(p.poll() is not None for p in [*procs, reader]):
                    break
                time.sleep(0.05)
    finally:
        outs = [p.communicate(timeout=120)[0] for p in procs]
        reader.communicate(timeout=60)
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and out.count(": ok") == TRIES, out[-3000:]
    for i in range(TRIES):
        db = tmp_path / f"try{i}" / "mlruns" / "mlflow.db"
        c = mlflow.MlflowClient(f"sqlite:///{db}")
        runs = c.search_runs([c.get_experiment_by_name("transferlab").experiment_id],
                             run_view_type=ViewType.ALL)
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"], i
        assert [c.get_metric_history(r.info.run_id, "loss")[0].value for r in runs] == [1.0, 1.0]
        assert not list(db.parent.glob(".mlflow.db.init-*"))  # no half-built schema left behind
