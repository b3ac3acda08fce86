"""transferlab predict: a trained run's model (--run) and an ImageNet head (--backbone), offline."""

import json
import os
import subprocess
from pathlib import Path

import keras
import mlflow
import pytest

from conftest import ROOT
from test_pretrained import SOURCE_EXP, source  # noqa: F401  (session-cached tiny source run)
from transferlab import predict
from transferlab.cli import main

VENV_BIN = ROOT / ".venv" / "bin"


def _test_images(src):
    return sorted(str(p) for p in (src["data"] / "test").rglob("*.png"))


def test_imagenet_class_index_is_keras_order():
    classes = predict.imagenet_classes()
    assert len(classes) == 1000 and len({s for s, _ in classes}) == 1000
    assert [s for s, _ in classes] == sorted(s for s, _ in classes)
    known = {0: "tench", 1: "goldfish", 2: "great_white_shark", 207: "golden_retriever",
             281: "tabby", 409: "analog_clock", 999: "toilet_tissue"}
    assert {i: classes[i][1] for i in known} == known
    assert classes[0][0] == "n01440764" and classes[999][0] == "n15075141"


def test_predict_with_a_run(source, capsys, tmp_path):
    images = _test_images(source)[:3]
    rc = main(["predict", "--tracking-uri", source["uri"], "--run", source["run_id"], *images])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 3
    for path, line in zip(images, out):
        name, prob = line.removeprefix(f"{path}: ").split()
        assert name in ("circle", "cross") and 0.5 <= float(prob) <= 1.0
    # an unreadable image: named, the others still classified, exit 1
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    rc = main(["predict", "--tracking-uri", source["uri"], "--run", f"latest:{SOURCE_EXP}",
               "--top", "2", images[0], str(bad), str(tmp_path / "missing.jpg")])
    cap = capsys.readouterr()
    assert rc == 1
    assert f"cannot read {bad}: corrupt" in cap.err and "missing.jpg: no such file" in cap.err
    assert cap.out.startswith(f"{images[0]}: ") and "(top-2: " in cap.out and len(cap.out.splitlines()) == 1


def test_predict_errors(source, capsys):
    uri = source["uri"]
    assert main(["predict", "--tracking-uri", uri, "--run", "0123abcd", "x.png"]) == 1
    assert "no MLflow run 0123abcd" in capsys.readouterr().err
    c = mlflow.MlflowClient(uri)
    exp = c.get_experiment_by_name(SOURCE_EXP).experiment_id
    bare = c.create_run(exp, tags={"transferlab.role": "job"}).info.run_id
    assert main(["predict", "--tracking-uri", uri, "--run", bare, "x.png"]) == 1
    assert f"run {bare} has no logged model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--run", bare, "--backbone", "vgg19", "x.png"])  # one or the other
    capsys.readouterr()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """One ordinary image file (a synthetic ring, 64 px JPEG)."""
    from transferlab.data import synthetic

    out = synthetic.generate(tmp_path_factory.mktemp("img"), classes=["ring", "square"],
                             images_per_class=3, size=64, fmt="jpg")
    return str(next((out / "test" / "ring").glob("*.jpg")))


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    """MobileNetV3Small with its ImageNet head, random init, saved as a local weights file."""
    path = tmp_path_factory.mktemp("w") / "mobilenetv3small_top.weights.h5"
    keras.applications.MobileNetV3Small(include_top=True, weights=None,
                                        input_shape=(224, 224, 3)).save_weights(path)
    return path


def test_predict_imagenet_head_offline(photo, imagenet_weights, capsys):
    names = {n for _, n in predict.imagenet_classes()}
    img = photo
    rc = main(["predict", "--backbone", "mobilenetv3small", "--weights", str(imagenet_weights), img])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    top5 = out[0].split("(top-5: ")[1].rstrip(")").split(", ")
    assert len(top5) == 5 and all(t.rsplit(" ", 1)[0] in names for t in top5)


def test_predict_console_script(photo, imagenet_weights, tmp_path):
    """The installed `transferlab` script; no network needed."""
    img = photo
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_HOME=str(tmp_path / "keras"))
    res = subprocess.run([str(VENV_BIN / "transferlab"), "predict", "--backbone", "mobilenetv3small",
                          "--weights", str(imagenet_weights), "--top", "3", img, str(tmp_path / "no.png")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stdout.startswith(f"{img}: ") and "(top-3: " in res.stdout
    assert "no.png: no such file" in res.stderr
    assert not Path(tmp_path / "keras" / "models").exists()  # nothing downloaded
    assert json.loads((ROOT / "src/transferlab/data/imagenet_class_index.json").read_text())["0"] == [
        "n01440764", "tench"]
