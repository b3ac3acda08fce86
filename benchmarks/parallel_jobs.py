"""Two jobs at once on one machine: each with all cores (TF default) vs its share.

    .venv/bin/python benchmarks/parallel_jobs.py [--steps 30] [--reps 2]

Each "job" is a separate Python process, as under hydra/launcher=joblib: it
imports TF, builds MobileNetV2@96 (random init, freeze=last4, uncached),
traces the train step and trains --steps batches of 32. Three ways, one
after the other in this script: both jobs one after the other (reference),
both at once with TF's default threads (each job uses every core: they
fight), both at once with the share isolate.thread_share gives them
(TF_NUM_INTRAOP_THREADS = cores / 2). Prints the wall time for the pair and
the ratio; best of --reps.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _common import ROOT, load, machine, table


def worker(steps: int) -> None:
    import numpy as np
    import tensorflow as tf

    from _common import compose

    from transferlab.models.build import build_model
    from transferlab.engine.train import prebuild

    cfg = compose(["backbone=mobilenetv2", "backbone.weights=null", "image_size=96", "freeze=last4"], "/tmp")
    model, _, _ = build_model(cfg, 2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, 96, 96, 3)).astype("float32")
    y = (np.arange(64) % 2).astype("float32")[:, None]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    prebuild(model, ds)
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    print(f"  (worker: fit {time.perf_counter() - t0:.1f} s, TF_NUM_INTRAOP_THREADS="
          f"{os.environ.get('TF_NUM_INTRAOP_THREADS', 'unset')})")


def launch(n: int, threads: int | None, steps: int, parallel: bool) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", "--steps", str(steps)]
    t0 = time.perf_counter()
    if parallel:
        procs = [subprocess.Popen(cmd, env=env, cwd=ROOT / "benchmarks") for _ in range(n)]
        for p in procs:
            assert p.wait() == 0
    else:
        for _ in range(n):
            subprocess.run(cmd, env=env, cwd=ROOT / "benchmarks", check=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.steps)
        return
    from omegaconf import OmegaConf

    from transferlab.runner.isolate import _cores, thread_share

    print("machine:", machine())
    cores = _cores()
    share = thread_share(OmegaConf.create({"trainer": {"threads": None}}), parallel=2)[0]
    res = {"one after the other": [], "2 at once, TF default threads": [],
           f"2 at once, {share} intra-op thread(s) each (the share)": []}
    for _ in range(args.reps):
        for name in res:
            t = launch(2, share if "share" in name else None, args.steps, "at once" in name)
            res[name].append(t)
            print(f"  {name}: {t:.1f} s ({load()})", flush=True)
    ref = min(res["2 at once, TF default threads"])
    rows = [[k, f"{min(v):.1f}", f"{min(v) / ref:.2f}"] for k, v in res.items()]
    print(f"\n2 jobs x (import + build + trace + {args.steps} steps of MobileNetV2@96 last4, batch 32) "
          f"on {cores} cores; wall for both, best of {args.reps}")
    print(table(["how", "seconds", "vs default threads"], rows))
    print("end:", load())


if __name__ == "__main__":
    main()
