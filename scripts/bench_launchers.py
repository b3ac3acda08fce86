"""Wall time of the same 4-job tiny sweep on the basic, joblib and Ray launchers.

    .venv/bin/python scripts/bench_launchers.py                       # basic, joblib, ray
    .venv/bin/python scripts/bench_launchers.py --isolate auto,off --repeat 2

The sweep: MobileNetV3Small, random init, 32 px, 1 epoch, freeze=all,last4 x
lr=1e-3,1e-4 (the test suite's TINY settings). joblib runs 2 jobs at once
(n_jobs=2); Ray gets a 2-CPU loopback cluster started here and 1 CPU per job,
so also 2 at once. Each run is checked in MLflow: 4 FINISHED child runs under
one parent. Wall time is the whole `run.py -m` command, Python start to exit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from conftest import TINY  # noqa: E402
from local_ray import LocalRayCluster  # noqa: E402

SWEEP = ["freeze=all,last4", "lr=1e-3,1e-4"]
LAUNCHER_ARGS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "ray": ["hydra/launcher=ray", "hydra.launcher.ray.remote.num_cpus=1"],
    "submitit_local": ["hydra/launcher=submitit_local"],
}


def run_sweep(launcher: str, isolate: str, env: dict[str, str]) -> tuple[float, str]:
    """Runs the sweep in a fresh folder; returns (wall seconds, check result)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="tlbench") as tmp:
        cmd = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, *SWEEP, f"root_dir={tmp}",
               f"hydra.sweep.dir={tmp}/multirun", f"runtime.isolate={isolate}",
               *LAUNCHER_ARGS[launcher]]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
        wall = time.perf_counter() - t0
        c = mlflow.MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
        try:
            exp = c.get_experiment_by_name("transferlab")
            runs = c.search_runs([exp.experiment_id])
        except Exception as e:  # no store at all
            return wall, f"no runs ({type(e).__name__}); exit {p.returncode}: {p.stderr[-300:]}"
        parents = [r for r in runs if r.data.tags.get("transferlab.role") == "sweep"]
        jobs = [r for r in runs if r.data.tags.get("transferlab.role") == "job"]
        ok = (p.returncode == 0 and len(parents) == 1 and len(jobs) == 4
              and all(r.info.status == "FINISHED" for r in jobs)
              and all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in jobs))
        pids = len({r.data.tags.get("pid") for r in jobs})
        return wall, ("ok" if ok else f"FAILED (exit {p.returncode}, {len(jobs)} job runs)") + f", {pids} job pids"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launchers", default="basic,joblib,ray")
    ap.add_argument("--isolate", default="auto", help="comma-separated runtime.isolate values")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    launchers = a.launchers.split(",")
    cluster = LocalRayCluster(num_cpus=2) if "ray" in launchers else None
    rows = []
    try:
        if cluster:
            cluster.start()
        for _ in range(a.repeat):
            for launcher in launchers:
                for isolate in a.isolate.split(","):
                    env = cluster.env if launcher == "ray" else {}
                    wall, check = run_sweep(launcher, isolate, env)
                    rows.append((launcher, isolate, wall, check))
                    print(f"{launcher:15s} isolate={isolate:5s} {wall:6.1f} s  {check}", flush=True)
    finally:
        if cluster:
            cluster.stop()
    return 0 if all(r[3].startswith("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
