"""A tiny MLflow store written exactly per the transferlab record contract (no TensorFlow).

``build_store(tmp)`` creates ``sqlite:///<tmp>/mlflow.db`` with artifacts under
``<tmp>/artifacts``:

* experiment ``fixture-exp``: one sweep parent run (``sweep_id=sw-fixture``) and
  its children: backbones vgg19 and mobilenetv2 x freeze all / last4 x seeds 1, 2
  (FINISHED, 4 epochs, final metrics, classes.json, test_predictions.csv), one
  FAILED run (vgg19 / none / seed 1) and one interrupted RUNNING run (vgg19 /
  none / seed 2). mobilenetv2 / last4 is two-phase (metric ``phase``).
* in ``fixture-exp`` too, sweep ``sw-rerun``: a parent run only, whose jobs were all
  skipped as already finished (parent tags ``skipped.<hash>`` -> the vgg19 runs).
* experiment ``evil-exp`` (``sweep_id=sw-evil``): two finished runs whose run name,
  backbone tag and a param value are HTML/script payloads.

Test accuracies are exact multiples of 1/40 chosen below, so the expected
matrix means are known in closed form (``FixtureStore.expected_means``).
"""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

N_TEST = 40
CLASSES = ["cat", "dog"]
EPOCHS = 4
EXPERIMENT = "fixture-exp"
SWEEP_ID = "sw-fixture"
EVIL_EXPERIMENT = "evil-exp"
EVIL_SWEEP_ID = "sw-evil"
RERUN_SWEEP_ID = "sw-rerun"   # re-run of the sweep: every vgg19 all/last4 job skipped
EVIL_NAME = "<script>alert(1)</script>"
EVIL_BACKBONE = "<img src=x onerror=alert(2)>"
EVIL_PARAM = '"><script>alert(3)</script>'
# (backbone, freeze) -> {seed: number of correct test images out of N_TEST}
CORRECT = {
    ("vgg19", "all"): {1: 30, 2: 32},
    ("vgg19", "last4"): {1: 37, 2: 36},
    ("mobilenetv2", "all"): {1: 28, 2: 28},
    ("mobilenetv2", "last4"): {1: 29, 2: 30},
}
IMAGE_SIZE = {"vgg19": "64", "mobilenetv2": "96"}
PARAMS_TOTAL = {"vgg19": 20_024_384, "mobilenetv2": 2_257_984}
TRAINABLE = {"all": 0.001, "last4": 0.12, "none": 1.0}


def test_paths() -> list[str]:
    return [f"{'cats' if i % 2 == 0 else 'dogs'}/{'cat' if i % 2 == 0 else 'dog'}.{1000 + i}.jpg"
            for i in range(N_TEST)]


def correctness(backbone: str, freeze: str, seed: int, n_correct: int) -> list[bool]:
    order = list(range(N_TEST))
    random.Random(f"{backbone}/{freeze}/{seed}").shuffle(order)
    right = set(order[:n_correct])
    return [i in right for i in range(N_TEST)]


def predictions_csv(correct: list[bool], shuffle_seed: str) -> str:
    """test_predictions.csv text; rows in a run-specific order (pairing must use path)."""
    paths = test_paths()
    rows = []
    for i, (path, ok) in enumerate(zip(paths, correct)):
        true = i % 2
        pred = true if ok else 1 - true
        p1 = 0.8 if pred == 1 else 0.2
        rows.append([path, true, pred, int(ok), f"{1 - p1:.4f}", f"{p1:.4f}"])
    random.Random(shuffle_seed).shuffle(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "true", "pred", "correct", "p_0", "p_1"])
    w.writerows(rows)
    return buf.getvalue()


def flat_params(backbone: str, freeze: str, seed: int, lr: str = "1e-05") -> dict[str, str]:
    strategy, n = {"all": ("all", "None"), "none": ("none", "None"),
                   "last4": ("last_n", "4")}[freeze]
    return {
        "backbone.name": backbone, "backbone.weights": "None", "freeze.strategy": strategy,
        "freeze.n": n, "freeze.bn": "frozen", "lr": lr, "seed": str(seed),
        "optimizer.name": "rmsprop", "head.pooling": "flatten", "trainer.epochs": str(EPOCHS),
        "trainer.batch_size": "32", "dataset.name": "synthetic", "image_size": IMAGE_SIZE.get(
            backbone, "64"),
    }


@dataclass
class FixtureStore:
    root: Path
    uri: str
    experiment_id: str
    evil_experiment_id: str
    parent_run_id: str
    runs: dict[tuple, str] = field(default_factory=dict)   # (backbone, freeze, seed) -> id
    failed_run_id: str = ""
    running_run_id: str = ""
    evil_run_ids: list[str] = field(default_factory=list)

    @property
    def expected_means(self) -> dict[tuple, float]:
        return {k: sum(v.values()) / len(v) / N_TEST for k, v in CORRECT.items()}


def _log_job(client: MlflowClient, exp_id: str, parent_id: str, sweep_id: str, backbone: str,
             freeze: str, seed: int, *, n_correct: int | None, status: str, epochs: int,
             name: str | None = None, params: dict | None = None, two_phase: bool = False,
             tmp: Path) -> str:
    run_name = name or f"{backbone}-{freeze}-lr1e-05-s{seed}"
    tags = {"mlflow.parentRunId": parent_id, "transferlab.role": "job", "backbone": backbone,
            "freeze": freeze, "sweep_id": sweep_id, "config_hash": f"h-{backbone}-{freeze}-{seed}"}
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    rid = run.info.run_id
    p = params or flat_params(backbone, freeze, seed)
    frac = (n_correct or 20) / N_TEST
    metrics = []
    for e in range(epochs):
        t = (e + 1) / EPOCHS
        vals = {"acc": 0.5 + (frac - 0.45) * t + 0.04 * t, "val_acc": 0.5 + (frac - 0.5) * t,
                "loss": 0.7 - 0.4 * t, "val_loss": 0.72 - 0.3 * t}
        if two_phase:
            vals["phase"] = 1.0 if e < EPOCHS // 2 else 2.0
        metrics += [Metric(k, v, 1_700_000_000_000 + e, e) for k, v in vals.items()]
    if n_correct is not None:
        total = PARAMS_TOTAL[backbone]
        metrics += [Metric(k, float(v), 1_700_000_100_000, 0) for k, v in {
            "test_acc": n_correct / N_TEST, "test_loss": 0.9 - n_correct / N_TEST / 2,
            "params_total": total, "params_trainable": int(total * TRAINABLE[freeze]),
            "train_seconds": 10.0 + 50 * TRAINABLE[freeze] + seed,
            "train_images_per_s": 100.0 - 40 * TRAINABLE[freeze], "test_images": N_TEST}.items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in p.items()],
                     tags=[RunTag("seed_note", "fixture")])
    if n_correct is not None:
        d = tmp / rid
        d.mkdir()
        (d / "classes.json").write_text(json.dumps(CLASSES))
        (d / "test_predictions.csv").write_text(predictions_csv(
            correctness(backbone, freeze, seed, n_correct), rid))
        (d / "config.yaml").write_text(
            "\n".join(f"{k}: {v}" for k, v in p.items()) + "\n")
        client.log_artifacts(rid, str(d))
    if status != "RUNNING":
        client.set_terminated(rid, status)
    return rid


def build_store(root: Path) -> FixtureStore:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=root.as_uri() + "/artifacts")
    evil_id = client.create_experiment(EVIL_EXPERIMENT,
                                       artifact_location=root.as_uri() + "/artifacts-evil")
    parent = client.create_run(exp_id, run_name=f"sweep-{SWEEP_ID}",
                               tags={"sweep_id": SWEEP_ID, "transferlab.role": "sweep"})
    store = FixtureStore(root, uri, exp_id, evil_id, parent.info.run_id)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        for (bb, fz), seeds in CORRECT.items():
            for seed, n in seeds.items():
                store.runs[(bb, fz, seed)] = _log_job(
                    client, exp_id, parent.info.run_id, SWEEP_ID, bb, fz, seed, n_correct=n,
                    status="FINISHED", epochs=EPOCHS,
                    two_phase=(bb, fz) == ("mobilenetv2", "last4"), tmp=tmp)
        store.failed_run_id = _log_job(client, exp_id, parent.info.run_id, SWEEP_ID, "vgg19",
                                       "none", 1, n_correct=None, status="FAILED", epochs=1,
                                       tmp=tmp)
        client.set_tag(store.failed_run_id, "transferlab.error", "ResourceExhaustedError: OOM")
        store.running_run_id = _log_job(client, exp_id, parent.info.run_id, SWEEP_ID, "vgg19",
                                        "none", 2, n_correct=None, status="RUNNING", epochs=2,
                                        tmp=tmp)
        client.set_terminated(parent.info.run_id, "FINISHED")
        rerun = client.create_run(exp_id, run_name=f"sweep-{RERUN_SWEEP_ID}",
                                  tags={"sweep_id": RERUN_SWEEP_ID, "transferlab.role": "sweep"})
        for (bb, fz, seed), rid in store.runs.items():
            if bb == "vgg19":
                client.set_tag(rerun.info.run_id, f"skipped.h-{bb}-{fz}-{seed}", rid)
        client.set_terminated(rerun.info.run_id, "FINISHED")
        evil_parent = client.create_run(evil_id, run_name="sweep-evil",
                                        tags={"sweep_id": EVIL_SWEEP_ID,
                                              "transferlab.role": "sweep"})
        for fz, n, name, opt in (("all", 30, EVIL_NAME, "rmsprop"),
                                 ("last4", 33, "evil-last4", EVIL_PARAM)):
            params = dict(flat_params("vgg19", fz, 1), **{"optimizer.name": opt})
            rid = _log_job(client, evil_id, evil_parent.info.run_id, EVIL_SWEEP_ID, "vgg19", fz,
                           1, n_correct=n, status="FINISHED", epochs=EPOCHS, name=name,
                           params=params, tmp=tmp)
            client.set_tag(rid, "backbone", EVIL_BACKBONE)
            store.evil_run_ids.append(rid)
        client.set_terminated(evil_parent.info.run_id, "FINISHED")
    return store


def log_run(client: MlflowClient, exp_id: str, tmp: Path, *, name: str, params: dict,
            history: dict[str, list[float]], metrics: dict[str, float], true=None, pred=None,
            classes=CLASSES, tags: dict | None = None, status: str = "FINISHED") -> str:
    """One job run written per the record contract from plain values (for small stores).

    ``history``: metric -> per-epoch values (step = epoch); ``true``/``pred``: test class
    indices, written as test_predictions.csv (paths ``<class>/img<i>.png``) with
    classes.json.
    """
    tags = {"transferlab.role": "job", "backbone": params.get("backbone.name", "vgg19"),
            "freeze": params.get("freeze.strategy", "all"), **(tags or {})}
    rid = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    ms = [Metric(k, float(v), 1_700_000_000_000 + e, e)
          for k, vals in history.items() for e, v in enumerate(vals)]
    ms += [Metric(k, float(v), 1_700_000_100_000, 0) for k, v in metrics.items()]
    client.log_batch(rid, metrics=ms, params=[Param(k, str(v)) for k, v in params.items()])
    if true is not None:
        k = len(classes)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "true", "pred", "correct"] + [f"p_{j}" for j in range(k)])
        for i, (t, p) in enumerate(zip(true, pred)):
            probs = [0.9 if j == p else 0.1 / (k - 1) for j in range(k)]
            w.writerow([f"{classes[t]}/img{i}.png", t, p, int(t == p)] + [f"{x:.4f}" for x in probs])
        d = tmp / rid
        d.mkdir(parents=True)
        (d / "test_predictions.csv").write_text(buf.getvalue())
        (d / "classes.json").write_text(json.dumps(list(classes)))
        client.log_artifacts(rid, str(d))
    if status != "RUNNING":
        client.set_terminated(rid, status)
    return rid
