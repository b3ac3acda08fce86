"""The sweep's worker process: one dying (OOM killer, kill -9) leaves no RUNNING run behind;
it is started (and imports TensorFlow) before the first job."""

import os
import signal
import threading
import time

import mlflow

from conftest import TINY
from transferlab.runner import isolate


def test_a_dead_workers_run_is_closed_failed(compose, tmp_path):
    cfg = compose([*TINY, "trainer.epochs=30", "runtime.isolate=process", "runtime.feature_cache=off"])
    out = {}

    def go():
        try:
            isolate.dispatch(cfg, ["trainer.epochs=30"], shared_process=True)
        except BaseException as e:  # noqa: BLE001 (the test inspects it)
            out["error"] = e

    t = threading.Thread(target=go)
    t.start()
    c = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    deadline = time.time() + 300
    run = None
    while time.time() < deadline and run is None:  # wait until the job has logged an epoch
        time.sleep(1)
        exp = c.get_experiment_by_name("transferlab") if (tmp_path / "mlruns" / "mlflow.db").exists() else None
        runs = c.search_runs([exp.experiment_id]) if exp else []
        if runs and c.get_metric_history(runs[0].info.run_id, "loss"):
            run = runs[0]
    assert run is not None, "the job never logged an epoch"
    pid = int(run.data.tags["pid"])
    assert pid != os.getpid()  # it ran in the worker
    os.kill(pid, signal.SIGKILL)
    t.join(120)
    assert isinstance(out.get("error"), RuntimeError) and "worker process died" in str(out["error"])
    after = c.get_run(run.info.run_id)
    assert after.info.status == "FAILED"
    assert "worker process died" in after.data.tags["error"]
    isolate.shutdown()


def _probe():
    import os
    import sys

    return os.getpid(), "keras" in sys.modules and "transferlab.runner.job" in sys.modules


def test_prestarted_worker_has_imported_tensorflow_before_its_first_task(compose):
    """The sweep starts its worker before scanning (SweepCallback): the imports run first
    in that worker, so the first job finds them done; a sweep that stops before any job
    terminates the worker instead of waiting for its imports."""
    cfg = compose(TINY)
    isolate.prestart(cfg)
    try:
        started = set(isolate._pool._processes)
        pid, warm = isolate._pool.submit(_probe).result(timeout=300)
        assert warm and pid in started
    finally:
        isolate.shutdown()
    isolate.prestart(cfg)
    procs = list(isolate._pool._processes.values())
    isolate.shutdown()
    assert [p.exitcode for p in procs] == [-signal.SIGTERM]
