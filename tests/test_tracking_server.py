"""A shared tracking server for real: PostgreSQL (initdb + pg_ctl in a temporary
folder), `mlflow server --serve-artifacts` on it, a tiny sweep logged over HTTP and
read back through the server. Everything listens on 127.0.0.1 and is stopped and
removed afterwards.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from conftest import ROOT, TINY

from transferlab import server

ARTIFACTS = {"config.yaml", "curves.png", "confusion_matrix.png", "test_predictions.csv",
             "model_summary.txt", "classes.json"}
REPORT = {"report.html", "report.md", "leaderboard.csv"}


def _need_engines() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError as e:
        pytest.skip(f"psycopg2 is not installed ({e}): pip install -e '.[server]'")
    try:
        server.pg_bindir()
    except server.ServerError as e:
        pytest.skip(str(e))


def _tmpdir() -> Path:
    # Not under pytest's tmp_path (mode 0700): as root PostgreSQL runs as `nobody`,
    # which must reach the folder.
    d = Path(tempfile.mkdtemp(prefix="tlsrv", dir="/tmp"))
    d.chmod(0o755)
    return d


@pytest.fixture(scope="module")
def tracking_server():
    _need_engines()
    root = _tmpdir()
    pg = server.Postgres(root, port=server.free_port())
    proc = None
    try:
        try:
            pg.start()
        except server.ServerError as e:
            pytest.skip(f"PostgreSQL cannot start here: {e}")
        port = server.free_port()
        proc = server.start_mlflow(pg.uri, root / "artifacts", port=port,
                                   log=root / "mlflow-server.log", timeout=120)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", root=root, pg=pg, proc=proc)
    finally:
        if proc is not None:
            server.stop_process(proc)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert proc is None or proc.poll() is not None
    assert not (pg.data / "postmaster.pid").exists()


@pytest.mark.slow
def test_sweep_logs_over_http_to_postgres_backed_server(tmp_path, tracking_server):
    """Slow: a sweep over HTTP to a PostgreSQL-backed server: ~30 s on 2 cores."""
    url = tracking_server.url
    work = tmp_path / "worker"  # as a worker on another host: no store of its own
    work.mkdir()
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "freeze=all,last4",
           "trainer.epochs=2", "tracking=server", f"tracking.uri={url}",
           f"hydra.sweep.dir={work}/multirun"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRANSFERLAB_ROOT"))}
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert f"MLflow store: {url}" in out

    c = mlflow.MlflowClient(url)
    exp = c.get_experiment_by_name("transferlab")
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("transferlab.role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("transferlab.role") == "job"]
    assert len(parents) == 1 and len(jobs) == 2, out[-3000:]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for r in jobs:
        assert r.info.status == "FINISHED", r.data.tags.get("error")
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.params["backbone.name"] == "mobilenetv3small"
        for m in ("acc", "val_acc", "loss", "val_loss"):
            assert sorted(h.step for h in c.get_metric_history(r.info.run_id, m)) == [0, 1], m
        for m in ("test_acc", "test_loss", "params_total", "params_trainable", "train_seconds"):
            assert m in r.data.metrics, m
        assert {a.path for a in c.list_artifacts(r.info.run_id)} >= ARTIFACTS
        # Read back through the server, byte for byte what the job wrote.
        csv = Path(c.download_artifacts(r.info.run_id, "test_predictions.csv", str(tmp_path)))
        assert csv.read_text().startswith("path,true,pred,correct")
    report = {a.path.split("/")[-1] for a in c.list_artifacts(parent.info.run_id, "report")}
    assert report >= REPORT, report
    html = Path(c.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path)))
    assert "mobilenetv3small" in html.read_text()

    # The runs live in PostgreSQL, the files under the server's artifact folder ...
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=tracking_server.pg.port, user=server.DB_USER,
                          dbname=server.DB_NAME) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'")
        assert cur.fetchone()[0] == 3
    served = {f.name for f in (tracking_server.root / "artifacts").rglob("*") if f.is_file()}
    assert served >= ARTIFACTS | REPORT
    # ... and nothing of the store on the worker's side: no database, no run folders,
    # no artifact files (local caches such as feature_cache/ may exist).
    assert not list(work.rglob("*.db")) and not list(work.rglob("meta.yaml"))
    local = {f.name for f in work.rglob("*") if f.is_file() and "multirun" not in f.parts}
    assert not local & (ARTIFACTS | REPORT), local & (ARTIFACTS | REPORT)


def test_server_up_command_starts_and_stops_everything(tmp_path):
    """`python -m transferlab.server up` (the README's command) until SIGTERM."""
    _need_engines()
    root = _tmpdir()
    port, pg_port = server.free_port(), server.free_port()
    cmd = [sys.executable, "-m", "transferlab.server", "up", "--dir", str(root),
           "--port", str(port), "--pg-port", str(pg_port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        server.wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=120)
        # The command prints its banner right after the server answers: read up to
        # it, or a SIGTERM sent in between would stop it before it printed.
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if "Ctrl-C stops" in line:
                break
        c = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        assert c.create_experiment("up-check")
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
        out = "".join(banner) + rest
        assert proc.returncode == 0, out
        assert "MLflow server: http://127.0.0.1:" in out and "tracking=server" in out
        assert not (root / "pgdata" / "postmaster.pid").exists(), "PostgreSQL still running"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            try:
                server.wait_healthy(f"http://127.0.0.1:{port}", timeout=1)
            except server.ServerError:
                break
        else:
            pytest.fail("mlflow server still answering after `up` was stopped")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        server.Postgres(root, pg_port).stop()
        shutil.rmtree(root, ignore_errors=True)
