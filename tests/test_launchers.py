"""Launchers beyond `basic`, on real engines: a Ray cluster started here (loopback
only), submitit's local executor; and the Optuna sweeper's learning-rate preset.

Each sweep runs `run.py -m` from a fresh folder without `root_dir=`, the way a
user does, so the store is `<that folder>/mlruns` and every job, wherever its
launcher runs it, must log into that one store under the sweep's parent run.
"""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "scripts"))
from local_ray import LocalRayCluster, RayUnavailable, _session_alive  # noqa: E402

ARTIFACTS = {"config.yaml", "curves.png", "confusion_matrix.png", "test_predictions.csv",
             "model_summary.txt", "classes.json"}


def need(module: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        pytest.skip(f"{module} is not installed ({e}); install it with: pip install -e '.[{extra}]'")


def sweep(cwd: Path, *overrides: str, env=None, timeout=600):
    """`python run.py -m TINY... overrides` run from `cwd`; returns (process, wall seconds)."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", *TINY,
           f"hydra.sweep.dir={cwd}/multirun", *overrides]
    base = {k: v for k, v in os.environ.items() if k != "TRANSFERLAB_ROOT"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**base, **(env or {})})
    return p, time.perf_counter() - t0


def sweep_runs(store: Path, experiment: str = "transferlab"):
    """(parent runs, job runs) in the SQLite store under `store`/mlruns."""
    db = store / "mlruns" / "mlflow.db"
    assert db.exists(), f"no store at {db}"
    c = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return ([r for r in runs if r.data.tags.get("transferlab.role") == "sweep"],
            [r for r in runs if r.data.tags.get("transferlab.role") == "job"], c)


def assert_one_finished_sweep(store: Path, n_jobs: int, out: str, experiment="transferlab"):
    parents, jobs, c = sweep_runs(store, experiment)
    assert len(parents) == 1, out[-3000:]
    parent = parents[0]
    assert len(jobs) == n_jobs, ([r.data.tags.get("mlflow.parentRunId") for r in jobs], out[-3000:])
    for r in jobs:
        assert r.info.status == "FINISHED", (r.data.tags.get("error"), out[-3000:])
        assert r.data.tags.get("mlflow.parentRunId") == parent.info.run_id, out[-3000:]
        assert r.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert {a.path for a in c.list_artifacts(r.info.run_id)} >= ARTIFACTS
    assert parent.info.status == "FINISHED", out[-3000:]
    return parent, jobs


# -- config only ------------------------------------------------------------

@pytest.mark.parametrize("launcher,target,keys", [
    ("joblib", "JoblibLauncher", {"n_jobs"}),
    ("ray", "RayLauncher", {"ray"}),
    ("submitit_local", "LocalLauncher", {"timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb"}),
    ("submitit_slurm", "SlurmLauncher", {"timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb",
                                         "partition", "array_parallelism"}),
])
def test_launcher_configs_compose(tmp_path, launcher, target, keys):
    """Each ready-made launcher config composes (validated against the plugin's schema)."""
    if launcher == "ray":  # joblib's launcher comes with transferlab itself
        need("hydra_plugins.hydra_ray_launcher", "ray")
    if launcher.startswith("submitit"):
        need("hydra_plugins.hydra_submitit_launcher", "submitit")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"root_dir={tmp_path}", f"hydra/launcher={launcher}"],
                      return_hydra_config=True)
    la = cfg.hydra.launcher
    assert la._target_.endswith(target)
    assert keys <= set(la.keys())
    if launcher == "ray":
        r = OmegaConf.to_container(la.ray, resolve=True)
        assert r["init"]["object_store_memory"] is None  # ray.init refuses it for a running cluster
        assert {"num_cpus", "num_gpus", "memory"} <= set(r["remote"])
        assert r["remote"]["max_calls"] == cfg.runtime.jobs_per_process


# -- Ray ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    need("hydra_plugins.hydra_ray_launcher.ray_launcher", "ray")
    cluster = LocalRayCluster(num_cpus=2)
    try:
        cluster.start()
    except RayUnavailable as e:
        pytest.skip(f"a Ray head node cannot start here: {e}")
    pgid = cluster.proc.pid
    try:
        yield cluster
    finally:
        cluster.stop()
    assert not _session_alive(pgid), "Ray processes left running after the cluster was stopped"


@pytest.mark.slow  # ~45-60 s on 2 cores
def test_ray_four_job_sweep_one_store(tmp_path, ray_cluster):
    """4 jobs as Ray tasks, 2 at a time (1 CPU each on a 2-CPU cluster), all in one store.

    Ray workers do not inherit the launching process's environment nor its working
    directory (they start in the folder `ray start` ran in), yet every job must log to
    `<cwd>/mlruns` under the sweep's parent run.
    """
    p, wall = sweep(tmp_path, "freeze=all,last4", "lr=1e-3,1e-4", "hydra/launcher=ray",
                    "hydra.launcher.ray.remote.num_cpus=1", env=ray_cluster.env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "(_run_job pid=" in out  # the jobs' output came back through Ray
    _, jobs = assert_one_finished_sweep(tmp_path, 4, out)
    assert {(r.data.params["freeze.strategy"], r.data.params["lr"]) for r in jobs} == {
        (f, lr) for f in ("all", "last_n") for lr in ("0.001", "0.0001")}
    assert not list(Path(ray_cluster.tmp).rglob("mlflow.db")), "a job logged into a store of its own"
    assert (tmp_path / "multirun" / "report" / "report.html").exists()
    print(f"\n[ray] 4-job sweep: {wall:.1f} s")


# -- submitit ----------------------------------------------------------------

@pytest.mark.slow
def test_submitit_local_two_job_sweep(tmp_path):
    """Slow: submitit's own job processes: ~35 s on 2 cores."""
    need("hydra_plugins.hydra_submitit_launcher.submitit_launcher", "submitit")
    p, wall = sweep(tmp_path, "freeze=all,last4", "hydra/launcher=submitit_local")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    _, jobs = assert_one_finished_sweep(tmp_path, 2, out)
    assert list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl")), "submitit did not run the jobs"
    print(f"\n[submitit_local] 2-job sweep: {wall:.1f} s")


# -- Optuna sweeper ------------------------------------------------------------

@pytest.mark.slow
def test_optuna_lr_search_preset(tmp_path):
    """experiment=lr_search: 3 Optuna trials over lr, each an MLflow run, a best value found.

    Slow: three Optuna trials: ~30 s on 2 cores."""
    need("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper", "optuna")
    p, _ = sweep(tmp_path, "experiment=lr_search", "hydra.sweeper.n_trials=3")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "Best value:" in out, out[-4000:]
    _, jobs = assert_one_finished_sweep(tmp_path, 3, out, experiment="lr_search")
    lrs = {float(r.data.params["lr"]) for r in jobs}
    assert len(lrs) == 3 and all(1e-6 <= lr <= 1e-1 for lr in lrs)
    best = (tmp_path / "multirun" / "optimization_results.yaml").read_text()
    assert "best_params" in best and "lr" in best
