"""Nothing lost: kill -9 in the middle of a sweep, rerun the same command."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.entities import ViewType

from conftest import ROOT, TINY
from test_sweep_e2e import PER_EPOCH, runs_of

# 4 jobs x 3 epochs; 25 steps per epoch on images make an epoch last long enough
# (~1-2 s) for the kill to land inside epoch 2 of job 2. On cached features an
# epoch takes ~0.1 s and the sweep could finish between two polls.
ARGS = [*TINY, "seed=1,2,3,4", "trainer.epochs=3", "trainer.steps_per_epoch=25",
        "runtime.feature_cache=off"]


def _cmd(tmp_path):
    return [sys.executable, "run.py", "-m", *ARGS, f"root_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/multirun"]


def _job_steps(db):
    """{run_id: logged loss steps} of job runs, oldest first, read-only.

    Plain read-only SQLite: an MlflowClient opened while the sweep is still
    creating the schema would race it (the very problem the sweep avoids).
    """
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        runs = con.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'transferlab.role' AND t.value = 'job' ORDER BY r.start_time").fetchall()
        out = {rid: [s for (s,) in con.execute(
            "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'loss' ORDER BY step", (rid,))]
            for (rid,) in runs}
        con.close()
        return out
    except sqlite3.Error:
        return {}


@pytest.mark.slow
def test_kill_during_job_2_then_rerun_resumes_without_duplicates(tmp_path):
    """Slow: a killed sweep and its rerun: ~45 s on 2 cores."""
    db = tmp_path / "mlruns" / "mlflow.db"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    killed_run = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if db.exists():
                steps = _job_steps(db)
                # Job 2 finished epoch 1 and its backup is on disk (written just after the
                # epoch is logged; job 1's was removed when it finished): epoch 2 is running.
                backed_up = any((tmp_path / "mlruns" / "backups").glob("*/phase1/state.json"))
                if len(steps) == 2 and list(steps.values())[1] == [0] and backed_up:
                    killed_run = list(steps)[1]
                    break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker process
        proc.wait()
        log.close()
    assert killed_run, "job 2 never reached epoch 2: " + (tmp_path / "first.log").read_text()[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    assert client.get_run(killed_run).info.status == "RUNNING"  # what kill -9 leaves
    assert (tmp_path / "mlruns" / "backups").is_dir()

    p = subprocess.run(_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    (tmp_path / "rerun.log").write_text(p.stdout + p.stderr)
    assert p.returncode == 0, p.stdout[-3000:]
    assert f"continues MLflow run {killed_run}" in p.stdout
    _, children = runs_of(client)
    assert len(children) == 4, [c.info.status for c in children]
    assert all(r.info.status == "FINISHED" for r in children)
    assert killed_run in {r.info.run_id for r in children}
    for r in children:
        for m in PER_EPOCH + ("lr", "phase"):
            steps = sorted(h.step for h in client.get_metric_history(r.info.run_id, m))
            assert steps == [0, 1, 2], (r.data.tags["mlflow.runName"], m, steps)
    resumed = client.get_run(killed_run)
    assert resumed.data.tags["resumed"].startswith("after epoch")
    # Nothing stays RUNNING: the killed sweep's parent, whose process is gone, was closed
    # as KILLED by the rerun, saying why; the rerun's parent FINISHED.
    exp = client.get_experiment_by_name("transferlab")
    every = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    assert [r.info.status for r in every if r.info.status == "RUNNING"] == []
    parents, _ = runs_of(client)
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    assert "is gone" in parents[0].data.tags["transferlab.closed"]
    assert resumed.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert not any((tmp_path / "mlruns" / "backups").iterdir())  # cleaned after finishing


# Kills its own process when the first backup is about to be written: after epoch 0 is
# logged to MLflow (the logger runs before the backup), before any backup is on disk.
DIE_AT_FIRST_BACKUP = """
import os, signal, sys
from transferlab.engine import backup
backup.EpochBackup._write = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from transferlab.app import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_kill_between_first_logged_epoch_and_first_backup_keeps_the_run(tmp_path):
    """Slow: a killed sweep and its rerun: ~25-40 s on 2 cores."""
    args = ["-m", *TINY, "trainer.epochs=2", "runtime.isolate=off", f"root_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/multirun"]
    p = subprocess.run([sys.executable, "-c", DIE_AT_FIRST_BACKUP, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stdout[-3000:] + p.stderr[-3000:]
    db = tmp_path / "mlruns" / "mlflow.db"
    (killed_run, steps), = _job_steps(db).items()
    assert steps == [0]
    assert not list((tmp_path / "mlruns" / "backups").glob("*/phase1/state.json"))

    p = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"continues MLflow run {killed_run} from epoch 0" in p.stdout
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    parents, children = runs_of(client)
    assert [r.info.run_id for r in children] == [killed_run]  # kept, not closed and replaced
    run = children[0]
    assert run.info.status == "FINISHED" and run.data.tags["resumed"].startswith("from epoch 0")
    for m in PER_EPOCH + ("lr", "phase"):
        assert sorted(h.step for h in client.get_metric_history(killed_run, m)) == [0, 1], m
    assert [r.info.status for r in parents] == ["KILLED", "FINISHED"]
    every = client.search_runs([run.info.experiment_id], run_view_type=ViewType.ALL)
    assert not [r for r in every if r.info.status == "RUNNING"]


def test_a_job_killed_on_one_host_resumes_on_another_through_a_shared_backup_folder(
        compose, tmp_path, monkeypatch, capsys):
    """Two roots stand for two hosts: one store (a tracking server's stand-in), backups in
    a folder both see (runtime.backup_dir)."""
    from transferlab.runner import callbacks, job, tracking

    shared = [f"tracking.uri=sqlite:///{tmp_path}/shared/mlflow.db", f"runtime.backup_dir={tmp_path}/shared/backups"]
    host_a = compose([*TINY, "trainer.epochs=3", *shared], root=tmp_path / "a")
    log = callbacks.MlflowEpochLogger.on_epoch_end

    def killed_in_epoch_2(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return log(self, epoch, logs)

    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        job.run(host_a)
    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", log)
    host_b = compose([*TINY, "trainer.epochs=3", *shared], root=tmp_path / "b")
    run_id = job.run(host_b)["run_id"]
    assert f"continues MLflow run {run_id} after epoch 1" in capsys.readouterr().out
    c = tracking.client(tracking.tracking_uri(host_b))
    assert c.get_run(run_id).info.status == "FINISHED"
    assert sorted(h.step for h in c.get_metric_history(run_id, "loss")) == [0, 1, 2]
    assert not (tmp_path / "a" / "mlruns" / "backups").exists()
