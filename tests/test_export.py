"""transferlab export: a run's classifier as SavedModel / TFLite / ONNX, checked on its test split;
predict --model with the export; a job's latency metrics.

One tiny job (3 classes, model logged) is trained once per session and exported to each format.
"""

import csv
import json

import mlflow
import numpy as np
import pytest

from conftest import TINY
from transferlab import data
from transferlab.cli import main
from transferlab.runner import job

EXP = "export_src"
_RUN: dict = {}


@pytest.fixture
def trained(tmp_path_factory, compose):
    """mobilenetv3small @32, 3 classes, frozen base, 2 epochs, model logged (trained once)."""
    if not _RUN:
        root = tmp_path_factory.mktemp("export_src")
        cfg = compose([*TINY, "dataset.num_classes=3", "dataset.images_per_class=15", "freeze=all",
                       "lr=1e-3", "trainer.epochs=2", "tracking.log_model=true",
                       f"tracking.experiment={EXP}", "runtime.latency_repeats=2",
                       "runtime.latency_batches=2"], root=root)
        out = job.run(cfg)
        _RUN.update(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db", run_id=out["run_id"],
                    data=data.dataset_path(cfg))
    return _RUN


def _export(trained, tmp_path, fmt, *extra):
    out = tmp_path / fmt
    rc = main(["export", "--tracking-uri", trained["uri"], "--run", trained["run_id"], "--format", fmt,
               *extra, "--out", str(out), "--batches", "2", "--repeats", "1"])
    key = fmt + (f"_{extra[1]}" if extra else "")
    return rc, out, json.loads((out / f"check_{key}.json").read_text()), key


def _logged(trained, key):
    c = mlflow.MlflowClient(trained["uri"])
    metrics = c.get_run(trained["run_id"]).data.metrics
    return ({k.split(".", 2)[2]: v for k, v in metrics.items() if k.startswith(f"export.{key}.")},
            {f.path for f in c.list_artifacts(trained["run_id"], f"export/{key}")})


def test_a_job_logs_its_inference_cost(trained):
    m = mlflow.MlflowClient(trained["uri"]).get_run(trained["run_id"]).data.metrics
    # timings only positive: their order flips under load (2 shared cores), speed is benchmarks' job
    assert m["infer_ms_per_image_b1"] > 0 and m["infer_ms_per_step_b32"] > 0
    assert 1 < m["model_size_mb"] < 10  # MobileNetV3Small without its top + a 3-class head, float32


def _check_float(rc, check, capsys, trained, key):
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "check        PASSED" in out
    run_acc = mlflow.MlflowClient(trained["uri"]).get_run(trained["run_id"]).data.metrics["test_acc"]
    assert check["test_images"] == 9 and check["agreement"] == 1.0
    assert check["max_prob_diff"] <= 1e-4
    assert check["run_prob_diff"] < 1e-5  # the reloaded split and model reproduce the run's own record
    assert check["test_acc"] == check["keras_test_acc"] == pytest.approx(run_acc)
    assert check["size_mb"] > 0 and check["ms_per_image_b1"] > 0 and check["ms_per_step_b32"] > 0
    metrics, files = _logged(trained, key)
    assert metrics["test_acc"] == pytest.approx(run_acc) and metrics["passed"] == 1.0
    assert {f"export/{key}/classes.json", f"export/{key}/export.json"} <= files


def test_export_saved_model_then_predict_with_it(trained, tmp_path, capsys):
    rc, out, check, key = _export(trained, tmp_path, "saved_model")
    _check_float(rc, check, capsys, trained, key)
    assert json.loads((out / "classes.json").read_text()) == ["circle", "cross", "ring"]
    # predict --model: the export folder; the classes the run's Keras model predicted
    root = trained["data"] / "test"
    c = mlflow.MlflowClient(trained["uri"])
    with open(c.download_artifacts(trained["run_id"], "test_predictions.csv", str(tmp_path)), newline="") as f:
        rows = list(csv.DictReader(f))[:4]
    names = ["circle", "cross", "ring"]
    rc = main(["predict", "--model", str(out), *(str(root / r["path"]) for r in rows)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 4
    for r, line in zip(rows, lines):
        assert line.startswith(f"{root / r['path']}: {names[int(r['pred'])]} ")
        probs = np.array([float(r[f"p_{k}"]) for k in range(3)])
        assert f"{names[int(r['pred'])]} {probs.max():.3f}" in line


def test_export_tflite_float(trained, tmp_path, capsys):
    rc, out, check, key = _export(trained, tmp_path, "tflite")
    _check_float(rc, check, capsys, trained, key)
    assert (out / "model.tflite").is_file()


@pytest.mark.slow
def test_export_onnx(trained, tmp_path, capsys):
    rc, out, check, key = _export(trained, tmp_path, "onnx")
    _check_float(rc, check, capsys, trained, key)
    rc = main(["predict", "--model", str(out / "model.onnx"), str(next((trained["data"] / "test").rglob("*.png")))])
    assert rc == 0 and len(capsys.readouterr().out.strip().splitlines()) == 1


@pytest.mark.slow
def test_export_tflite_int8_states_its_drop(trained, tmp_path, capsys):
    rc, out, check, key = _export(trained, tmp_path, "tflite", "--quantize", "int8")
    text = capsys.readouterr().out
    assert rc == 0 and key == "tflite_int8"
    assert f"quantized: accuracy drop {check['acc_drop']:+.4f}" in text
    assert check["acc_drop"] == pytest.approx(check["keras_test_acc"] - check["test_acc"])
    assert "int8 ops calibrated on" in check["note"]
    assert check["size_mb"] < 0.5 * check["keras_size_mb"]  # int8 weights: about a quarter
    metrics, files = _logged(trained, key)
    assert metrics["acc_drop"] == pytest.approx(check["acc_drop"])
    assert "export/tflite_int8/model_int8.tflite" in files


def test_export_refuses_a_run_without_a_model(trained, tmp_path, capsys):
    c = mlflow.MlflowClient(trained["uri"])
    bare = c.create_run(c.get_experiment_by_name(EXP).experiment_id,
                        tags={"transferlab.role": "job"}).info.run_id
    rc = main(["export", "--tracking-uri", trained["uri"], "--run", bare, "--format", "tflite",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and f"run {bare} has no logged model" in err and "tracking.log_model=true" in err
    with pytest.raises(SystemExit):  # --quantize goes with tflite only
        main(["export", "--run", bare, "--format", "onnx", "--quantize", "int8", "--out", str(tmp_path)])
    assert main(["predict", "--model", str(tmp_path / "nothing"), "x.png"]) == 1
    assert "no such file or folder" in capsys.readouterr().err
