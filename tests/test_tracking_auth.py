"""A tracking server reachable beyond this host asks for a sign-in (MLflow's basic-auth
app); sweeps sign in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, and
outlive a restart of the server.

The server here listens on 127.0.0.1 only, with sign-in switched on as
``up --host 0.0.0.0`` switches it on; SQLite backend (no PostgreSQL needed).
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import requests

from conftest import ROOT, TINY
from transferlab import server
from transferlab.runner import tracking


def test_sign_in_is_on_exactly_beyond_loopback():
    assert server.needs_auth("0.0.0.0") and server.needs_auth("192.168.1.5") and server.needs_auth("::")
    assert not server.needs_auth("127.0.0.1") and not server.needs_auth("localhost")
    assert server.needs_auth("127.0.0.1", "on") and not server.needs_auth("0.0.0.0", "off")


def test_admin_password_generated_once_mode_0600(tmp_path):
    env, shown = server.auth_env(tmp_path)
    kept = tmp_path / "auth" / "admin_password"
    assert shown and kept.read_text().strip() == shown == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    env2, shown2 = server.auth_env(tmp_path)
    assert shown2 is None and env2 == env  # printed once, the same afterwards


def _start(root, port, env):
    return server.start_mlflow(f"sqlite:///{root}/mlflow.db", root / "artifacts", port=port,
                               log=root / "mlflow-server.log", timeout=150, auth=env)


@pytest.mark.slow
def test_anonymous_gets_401_a_signed_in_sweep_logs_and_outlives_a_server_restart(tmp_path):
    """Sign-in, then the server is stopped in the middle of the sweep's job and started
    again (down ~30 s): the job waits (tracking.Patient), then goes on."""
    root = Path(tempfile.mkdtemp(prefix="tlauth", dir="/tmp"))
    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    env, _ = server.auth_env(root)
    proc = _start(root, port, env)
    sweep = None
    try:
        search = f"{url}/api/2.0/mlflow/experiments/search"
        assert requests.get(search, params={"max_results": 1}, timeout=30).status_code == 401
        assert requests.get(search, params={"max_results": 1}, auth=("admin", "wrong"),
                            timeout=30).status_code == 401
        password = server.add_user(url, root, "alice")  # README: how to add a user
        assert requests.get(search, params={"max_results": 1}, auth=("alice", password),
                            timeout=30).status_code == 200

        work = tmp_path / "worker"
        work.mkdir()
        cmd = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "trainer.epochs=3",
               "trainer.steps_per_epoch=25", "runtime.feature_cache=off", "tracking=server",
               f"tracking.uri={url}", f"hydra.sweep.dir={work}/multirun"]
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRANSFERLAB_ROOT"))}
        # Without credentials a sweep stops at its first contact, saying what to set.
        with pytest.raises(tracking.TrackingUnreachable, match="MLFLOW_TRACKING_USERNAME"):
            tracking.check_reachable(url)

        signed_in = {**clean, "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": password}
        sweep = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=signed_in)
        s = requests.Session()
        s.auth = ("alice", password)
        deadline = time.time() + 300
        while time.time() < deadline and sweep.poll() is None:  # until the job logged epoch 0
            runs = s.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": ["1"]},
                          timeout=30).json().get("runs", [])
            if any(m["key"] == "loss" for r in runs for m in r["data"].get("metrics", [])
                   if r["data"].get("tags") and {"key": "transferlab.role", "value": "job"} in r["data"]["tags"]):
                break
            time.sleep(0.5)
        assert sweep.poll() is None, "the sweep ended before the restart: " + sweep.communicate()[0][-3000:]
        server.stop_process(proc, timeout=5)
        # Down 10 s before the restart begins, + its start (5-25 s): past MLflow's own quick
        # retries (3, backoff factor 1: ~7 s, tracking.client), so Patient's polling carries
        # the job. The start time varies with the load, so the outage is timed before it.
        time.sleep(10)
        proc = _start(root, port, env)
        out = sweep.communicate(timeout=600)[0]
        assert sweep.returncode == 0, out[-4000:]
        # The outage was long enough to be waited through, not hidden by MLflow's retries.
        assert "stopped answering" in out and f"tracking server {url} is back" in out, out[-4000:]
        os.environ.update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=password)
        try:
            c = mlflow.MlflowClient(url)
            exp = c.get_experiment_by_name("transferlab")
            runs = c.search_runs([exp.experiment_id])
            assert sorted(r.data.tags["transferlab.role"] for r in runs) == ["job", "sweep"]
            assert all(r.info.status == "FINISHED" for r in runs)
            job = next(r for r in runs if r.data.tags["transferlab.role"] == "job")
            for m in ("acc", "val_acc", "loss", "val_loss"):
                assert sorted(h.step for h in c.get_metric_history(job.info.run_id, m)) == [0, 1, 2], m
            assert "test_predictions.csv" in {a.path for a in c.list_artifacts(job.info.run_id)}
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
        server.stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)
