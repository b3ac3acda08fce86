"""Per-job overhead, this checkout vs the code before the speed work (a git revision).

    .venv/bin/python benchmarks/job_overhead.py [--before 347d1b0] [--reps 2] [--quick]

Each job is a real ``job.run`` (MLflow run, data, build, BatchNorm
calibration, compile, fit, test predictions, artifacts) on tiny data (20
synthetic images, batch 8, 1 epoch), so nearly all of it is overhead. Each
side runs in its own worker process that imports TensorFlow and runs one
unmeasured warm-up job first, as a sweep worker would, then the measured
job on an empty feature cache (a later job of a sweep would reuse the
features). "before" is ``git archive <rev>`` of the same repository
(default: 347d1b0, the last commit before frozen-feature caching, the
pre-built train step and the other changes of the speed issue), "after" is
this checkout. Sides alternate; best of --reps.

Figures, both read from the job's own MLflow metrics and clock:
"to first step" = data_seconds + build_seconds + feature_cache_seconds +
first_step_seconds (loading the data, building the model, computing the
cached features, the first training step with its tracing);
"whole job" = wall time of ``job.run``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# _common is imported by the parent only: it puts this checkout's src/ on sys.path,
# and a "before" worker must import the other revision's transferlab.

CASES = [  # backbone, px, freeze
    ("mobilenetv3small", 32, "all"),
    ("mobilenetv3small", 32, "last4"),
    ("mobilenetv3small", 32, "none"),
    ("resnet50", 64, "all"),
    ("resnet50", 64, "last4"),
    ("vgg19", 64, "all"),
    ("vgg19", 64, "last4"),
]


def worker(src: str, case: str, root: str) -> None:
    """Runs in a fresh process on ``src`` (either side): warm-up job, then the measured one."""
    sys.path.insert(0, f"{src}/src")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import mlflow
    from hydra import compose, initialize_config_dir

    from transferlab.runner import job
    from transferlab.config import register

    register()

    def cfg(name, px, freeze):
        with initialize_config_dir(f"{src}/conf", version_base="1.3"):
            return compose("config", overrides=[
                f"root_dir={root}", f"backbone={name}", "backbone.weights=null", f"image_size={px}",
                f"freeze={freeze}", "trainer.epochs=1", "trainer.batch_size=8", "runtime.verbose=0",
                "tracking.skip_finished=false", "dataset.images_per_class=10",
                f"dataset.source_size={px}"])

    job.run(cfg("mobilenetv3small", 32, "all"))  # warm-up: TF runtime, MLflow store; not measured
    shutil.rmtree(f"{root}/mlruns/feature_cache", ignore_errors=True)
    name, px, freeze = case.split(",")
    c = cfg(name, int(px), freeze)
    keras.utils.set_random_seed(42)
    t0 = time.perf_counter()
    out = job.run(c)
    wall = time.perf_counter() - t0
    m = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db").get_run(out["run_id"]).data.metrics
    parts = {k: m.get(f"{k}_seconds", 0.0) for k in ("data", "build", "feature_cache", "first_step")}
    print("RESULT " + json.dumps({"wall": wall, **parts, "to_first_step": sum(parts.values()),
                                  "module": job.__file__}))


def run_side(src: Path, case, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, __file__, "--worker", str(src), ",".join(map(str, case)), str(root)],
                       capture_output=True, text=True, env=env, cwd=ROOT / "benchmarks")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        sys.exit(f"worker failed on {src} {case}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    r = json.loads(lines[-1][len("RESULT "):])
    if not r["module"].startswith(str(src)):
        sys.exit(f"worker for {src} imported {r['module']}: check the install (editable finder?)")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="347d1b0", help="git revision of the 'before' side")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="MobileNetV3Small only")
    ap.add_argument("--worker", nargs=3, metavar=("SRC", "CASE", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    from _common import load, machine, table

    tmp = Path(tempfile.mkdtemp(prefix="overhead_"))
    before = tmp / "before"
    before.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", args.before], cwd=ROOT, check=True,
                             capture_output=True).stdout
    (tmp / "before.tar").write_bytes(archive)
    with tarfile.open(tmp / "before.tar") as t:
        t.extractall(before, filter="data")
    sides = {"before": before, "after": ROOT}
    print("machine:", machine())
    rows = []
    for case in CASES:
        if args.quick and case[0] != "mobilenetv3small":
            continue
        res = {"before": [], "after": []}
        for rep in range(args.reps):
            for side in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                root = tmp / f"{side}-{'-'.join(map(str, case))}-{rep}"
                r = run_side(sides[side], case, root)
                res[side].append(r)
                print(f"  {case[0]}@{case[1]} freeze={case[2]} {side}: to first step {r['to_first_step']:.1f} s "
                      f"(data {r['data']:.1f}, build {r['build']:.1f}, features {r['feature_cache']:.1f}, "
                      f"first step {r['first_step']:.1f}); job {r['wall']:.1f} s ({load()})", flush=True)
        b = min(res["before"], key=lambda r: r["to_first_step"])
        a = min(res["after"], key=lambda r: r["to_first_step"])
        bw, aw = min(r["wall"] for r in res["before"]), min(r["wall"] for r in res["after"])
        rows.append([f"{case[0]}@{case[1]}", case[2], f"{b['to_first_step']:.1f}", f"{a['to_first_step']:.1f}",
                     f"{a['to_first_step'] / b['to_first_step']:.2f}",
                     f"{b['first_step']:.1f} -> {a['feature_cache'] + a['first_step']:.1f}",
                     f"{bw:.1f} -> {aw:.1f}", f"{aw / bw:.2f}"])
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nbefore = {args.before}, after = this checkout; 20 images, batch 8, 1 epoch, warm worker; "
          f"best of {args.reps}")
    print(table(["model", "freeze", "to first step before (s)", "after (s)", "after/before",
                 "first step (+ features) before -> after", "whole job before -> after (s)",
                 "after/before"], rows))
    print("end:", load())


if __name__ == "__main__":
    main()
