"""Owners and leases of RUNNING runs: who may close or take over a run (no TensorFlow here)."""

import shutil
import subprocess
import time

import mlflow
import pytest

from conftest import TINY
from transferlab import data
from transferlab.runner import job, lease, tracking


@pytest.fixture(scope="module")
def _template(tmp_path_factory):
    """One store with its schema (its creation takes seconds), copied for each test."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking.client(f"sqlite:///{db}")
    return db


@pytest.fixture
def store(tmp_path, _template):
    (tmp_path / "mlruns").mkdir()
    shutil.copy(_template, tmp_path / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    c = tracking.client(uri)
    return uri, c, c.create_experiment("transferlab")


@pytest.fixture
def live_process():
    p = subprocess.Popen(["sleep", "120"])
    yield p
    p.kill()
    p.wait()


def _gone_owner() -> dict:
    p = subprocess.Popen(["sleep", "120"])
    tags = lease.owner_tags(p.pid)
    p.kill()
    p.wait()
    return tags


def test_owner_alive_on_this_host_by_pid_and_start_time(live_process):
    assert lease.owner_alive(lease.owner_tags())[0]
    assert lease.owner_alive(lease.owner_tags(live_process.pid))[0]
    gone = lease.owner_tags(live_process.pid)
    live_process.kill()
    live_process.wait()
    alive, why = lease.owner_alive(gone)
    assert not alive and f"no process {live_process.pid}" in why
    reused = lease.owner_tags()  # this pid, but "started" at another time: a reused pid
    machine, _, start = reused[lease.OWNER_ID].rpartition("@")
    reused[lease.OWNER_ID] = f"{machine}@{float(start) - 3600:.2f}"
    alive, why = lease.owner_alive(reused)
    assert not alive and "now belongs to a process started" in why
    assert not lease.owner_alive({})[0]  # no owner recorded: a run from before owners


def test_owner_on_another_host_lives_while_its_lease_does():
    other = {lease.OWNER: "elsewhere:123", lease.OWNER_ID: "boot/ns@1.0",
             lease.LEASE: f"{time.time() + 60:.0f}"}
    assert lease.owner_alive(other)[0]  # its pid means nothing here: the lease decides
    other[lease.LEASE] = f"{time.time() - 1:.0f}"
    alive, why = lease.owner_alive(other)
    assert not alive and "stopped renewing its lease" in why


def test_reap_closes_only_runs_of_dead_owners(store, live_process):
    uri, c, exp = store
    dead = _gone_owner()
    runs = {
        "dead parent": c.create_run(exp, tags={lease.ROLE: "sweep", **dead}),
        "dead job": c.create_run(exp, tags={lease.ROLE: "job", **dead}),
        "expired elsewhere": c.create_run(exp, tags={lease.ROLE: "job", lease.OWNER: "h2:1",
                                                     lease.OWNER_ID: "b/n@1", lease.LEASE: "1"}),
        "live job": c.create_run(exp, tags={lease.ROLE: "job", **lease.owner_tags(live_process.pid)}),
        "not transferlab's": c.create_run(exp, tags=dead),
    }
    closed = lease.reap(c)
    assert set(closed) == {runs[k].info.run_id for k in ("dead parent", "dead job", "expired elsewhere")}
    status = {k: c.get_run(r.info.run_id) for k, r in runs.items()}
    assert {k: r.info.status for k, r in status.items()} == {
        "dead parent": "KILLED", "dead job": "KILLED", "expired elsewhere": "KILLED",
        "live job": "RUNNING", "not transferlab's": "RUNNING"}
    assert "is gone" in status["dead job"].data.tags[lease.CLOSED]
    assert "lease" in status["expired elsewhere"].data.tags[lease.CLOSED]


def test_heartbeat_renews_the_lease_and_exit_closes_what_is_left(store, monkeypatch):
    uri, c, exp = store
    monkeypatch.setenv(lease.ENV_LEASE, "2")  # a beat every 0.4 s
    hb = lease.Heartbeat()
    run = c.create_run(exp, tags={lease.ROLE: "sweep", **lease.owner_tags()})
    first = float(run.data.tags[lease.LEASE])
    hb.add(uri, run.info.run_id)
    time.sleep(1.5)
    assert float(c.get_run(run.info.run_id).data.tags[lease.LEASE]) > first
    hb.close_all("its process exited without closing it")
    r = c.get_run(run.info.run_id)
    assert r.info.status == "KILLED" and "exited without closing" in r.data.tags[lease.CLOSED]


def _job_run(c, exp, cfg, owner):
    uri = tracking.tracking_uri(cfg)
    chash, _ = job.identity(cfg, data.scan(data.dataset_path(cfg)), uri)
    return c.create_run(exp, tags={lease.ROLE: "job", "config_hash": chash,
                                   "mlflow.runName": tracking.run_name(cfg), **owner})


def test_a_job_run_by_a_live_process_is_left_to_it_then_taken_over_once_it_dies(
        compose, tmp_path, store, live_process, capsys):
    uri, c, exp = store
    cfg = compose([*TINY, "runtime.feature_cache=off"])
    other = _job_run(c, exp, cfg, lease.owner_tags(live_process.pid))
    out = job.run(cfg)  # returns before TensorFlow is imported
    assert out["skipped"] and out["run_id"] == other.info.run_id
    said = capsys.readouterr().out
    assert f"pid {live_process.pid}" in said and other.info.run_id in said and lease.HOST in said
    assert c.get_run(other.info.run_id).info.status == "RUNNING"  # untouched
    assert len(c.search_runs([exp])) == 1  # and nothing created

    live_process.kill()
    live_process.wait()
    claimed = job._claim(c, uri, exp, other.data.tags["config_hash"], tmp_path / "no-backup",
                         {"mlflow.runName": "x"}, cfg)
    assert claimed == (other.info.run_id, -1)  # the same run, from epoch 0
    r = c.get_run(other.info.run_id)
    assert r.info.status == "RUNNING" and lease.mine(r.data.tags)
    assert r.data.tags["resumed_from_owner"] == f"{lease.HOST}:{live_process.pid}"
    lease.HEARTBEAT.remove(r.info.run_id)
    c.set_terminated(r.info.run_id, "KILLED")


def test_a_server_gone_past_the_retries_stops_the_job_with_one_message_and_it_resumes(
        compose, tmp_path, monkeypatch, capsys):
    """MLflow retries every request for minutes; past that the job stops, the run stays
    open (nothing can be recorded) and the next run of the command resumes it."""
    import requests

    from transferlab.runner import callbacks

    cfg = compose([*TINY, "trainer.epochs=3"])
    log = callbacks.MlflowEpochLogger.on_epoch_end

    def server_gone(self, epoch, logs=None):
        if epoch == 1:
            raise requests.ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch "
                                           "(Caused by NewConnectionError: Connection refused)")
        return log(self, epoch, logs)

    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", server_gone)
    with pytest.raises(tracking.TrackingUnreachable, match="Nothing is lost: run .* resumes"):
        job.run(cfg)
    c = tracking.client(tracking.tracking_uri(cfg))
    (run,) = c.search_runs([c.get_experiment_by_name("transferlab").experiment_id])
    assert run.info.status == "RUNNING"  # what a dead server leaves: nothing recorded
    monkeypatch.setattr(callbacks.MlflowEpochLogger, "on_epoch_end", log)  # the server is back
    out = job.run(cfg)
    assert out["run_id"] == run.info.run_id and not out.get("skipped")
    assert f"continues MLflow run {run.info.run_id}" in capsys.readouterr().out
    r = c.get_run(run.info.run_id)
    assert r.info.status == "FINISHED" and "gave it up" in r.data.tags[lease.CLOSED]
    for m in ("acc", "val_acc", "loss", "val_loss"):
        assert sorted(h.step for h in c.get_metric_history(run.info.run_id, m)) == [0, 1, 2], m
