"""How long does a comparison report over 200 runs take?

Creates a throw-away MLflow store (sqlite + local artifacts) holding one sweep
of 200 synthetic job runs written through ``MlflowClient`` per the transferlab
record contract: 5 backbones x 4 freezing strategies x 2 learning rates x 5
seeds, each with per-epoch metrics, final metrics, classes.json and a
test_predictions.csv; then times ``write_report`` over the sweep (best of
``--repeat``) and prints the figures.

    .venv/bin/python benchmarks/report_200_runs.py [--epochs 20] [--test-images 500]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from transferlab.report import write_report

BACKBONES = ["vgg19", "resnet50", "mobilenetv2", "efficientnetb0", "densenet121"]
FREEZES = {"all": ("all", "None"), "last4": ("last_n", "4"), "last8": ("last_n", "8"),
           "none": ("none", "None")}
LRS = ["1e-05", "0.0001"]
SEEDS = [1, 2, 3, 4, 5]
SWEEP = "bench-sweep"


def _predictions(rng, n, acc, classes) -> str:
    true = np.arange(n) % len(classes)
    ok = rng.random(n) < acc
    pred = np.where(ok, true, (true + 1) % len(classes))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "true", "pred", "correct"] + [f"p_{k}" for k in range(len(classes))])
    for i in range(n):
        probs = np.full(len(classes), 0.1 / max(1, len(classes) - 1))
        probs[pred[i]] = 0.9
        w.writerow([f"{classes[true[i]]}s/{classes[true[i]]}.{i}.jpg", int(true[i]),
                    int(pred[i]), int(ok[i])] + [f"{p:.3f}" for p in probs])
    return buf.getvalue()


def build(root: Path, epochs: int, n_test: int) -> tuple[str, float]:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=root.as_uri() + "/artifacts")
    parent = client.create_run(exp, run_name="sweep", tags={"sweep_id": SWEEP,
                                                            "transferlab.role": "sweep"})
    classes = ["cat", "dog"]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    tmp = root / "staging"
    for bi, bb in enumerate(BACKBONES):
        for fi, (fz, (strategy, n)) in enumerate(FREEZES.items()):
            for lr in LRS:
                for seed in SEEDS:
                    acc = 0.7 + 0.04 * fi + 0.02 * bi + rng.normal(0, 0.01)
                    run = client.create_run(exp, run_name=f"{bb}-{fz}-lr{lr}-s{seed}", tags={
                        "mlflow.parentRunId": parent.info.run_id, "transferlab.role": "job",
                        "backbone": bb, "freeze": fz, "sweep_id": SWEEP,
                        "config_hash": f"{bb}{fz}{lr}{seed}"})
                    rid = run.info.run_id
                    params = {"backbone.name": bb, "backbone.weights": "imagenet",
                              "freeze.strategy": strategy, "freeze.n": n, "lr": lr,
                              "seed": str(seed), "optimizer.name": "rmsprop",
                              "head.pooling": "flatten", "trainer.epochs": str(epochs),
                              "trainer.batch_size": "32", "dataset.name": "cats_dogs",
                              "image_size": "224"}
                    ms = []
                    for e in range(epochs):
                        t = (e + 1) / epochs
                        per_epoch = {"acc": 0.5 + (acc - 0.45) * t,
                                     "val_acc": 0.5 + (acc - 0.5) * t,
                                     "loss": 0.7 - 0.4 * t, "val_loss": 0.7 - 0.3 * t}
                        ms += [Metric(k, v, 1_700_000_000_000 + e, e) for k, v in per_epoch.items()]
                    final = {"test_acc": acc, "test_loss": 1 - acc, "params_total": 2e7,
                             "params_trainable": 2e7 * (fi + 1) / 4,
                             "train_seconds": 60.0 * (fi + 1),
                             "train_images_per_s": 30.0 / (fi + 1), "test_images": n_test}
                    ms += [Metric(k, float(v), 1_700_000_100_000, 0) for k, v in final.items()]
                    client.log_batch(rid, metrics=ms, tags=[RunTag("bench", "1")],
                                     params=[Param(k, v) for k, v in params.items()])
                    d = tmp / rid
                    d.mkdir(parents=True)
                    (d / "classes.json").write_text(json.dumps(classes))
                    (d / "test_predictions.csv").write_text(_predictions(rng, n_test, acc, classes))
                    client.log_artifacts(rid, str(d))
                    client.set_terminated(rid, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return uri, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        root = Path(tmp)
        uri, t_build = build(root, args.epochs, args.test_images)
        n = len(BACKBONES) * len(FREEZES) * len(LRS) * len(SEEDS)
        print(f"store: {n} runs x {args.epochs} epochs x 4 metrics, {args.test_images} "
              f"test predictions each; written in {t_build:.1f} s")
        times = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            paths = write_report(uri, root / f"out{i}", sweep_id=SWEEP)
            times.append(time.perf_counter() - t0)
        sizes = ", ".join(f"{k} {p.stat().st_size / 1024:.0f} KiB" for k, p in paths.items())
        print(f"write_report over {n} runs: {min(times):.2f} s (best of {args.repeat}; "
              f"all: {', '.join(f'{t:.2f}' for t in times)} s) -> {sizes}")
        print(f"per run: {1000 * min(times) / n:.1f} ms")


if __name__ == "__main__":
    main()
