"""Bad configuration ends with one clear message, a non-zero exit status, before any
training and without a half-written run: `run.py` (single run) and `run.py -m`.

Every case runs `run.py` in a subprocess as a user would. The subprocesses of
the selected cases start together (a module fixture, a few at a time): most
fail in about a second before TensorFlow loads.

Each test asserts, for its case and mode:
- exit status non-zero, and the key words of the message;
- one message: no Python traceback (Hydra's own composition errors print none);
- before any training: TensorFlow not even imported (the cases marked tf need
  the built base: it is built, nothing is trained; they are marked slow);
- no half-written run: the MLflow store, if created at all, holds no run.

"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

# Runs run.py as `python run.py ARGS` would, then says whether TF was imported.
WRAP = ("import sys, runpy\nsys.argv = ['run.py'] + sys.argv[1:]\n"
        "try:\n    runpy.run_path('run.py', run_name='__main__')\n"
        "finally:\n    print('TF_LOADED', 'tensorflow' in sys.modules, flush=True)\n")
BASE = ["backbone=mobilenetv3small", "backbone.weights=null", "image_size=32",
        "trainer.epochs=1", "runtime.verbose=0", "dataset.images_per_class=10",
        "dataset.source_size=32"]

@dataclass
class Case:
    args: list[str]
    words: list[str]
    tf: bool = False  # the check needs the built base
    modes: tuple[str, ...] = ("single", "multi")
    # A hang detector, not a speed limit: under `make test`'s 3 workers a TF case that
    # printed its one message was still exiting at 120 s (fresh clone, load 4-7).
    timeout: int = 300


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _closed_port()

CASES = {
    # Config group options: the closest ones named before Hydra composes (its own "Could not
    # find" listed every option and the search path, and named no fix).
    "unknown_backbone": Case(["backbone=vgg91"], ["backbone=vgg91: no such option",
                                                  "Did you mean vgg19", "Options of backbone"]),
    "unknown_strategy": Case(["freeze=last3"], ["freeze=last3: no such option", "last4",
                                                "freeze=last_n freeze.n=N"]),
    "unknown_optimizer": Case(["optimizer=adagrad"], ["optimizer=adagrad: no such option",
                                                      "rmsprop", "adamw"]),
    # The same values set by key: transferlab's validation.
    "unknown_backbone_name": Case(["backbone.name=vgg91"],
                                  ["'vgg91'", "Did you mean vgg19", "Allowed: convnextbase"]),
    "unknown_strategy_name": Case(["freeze.strategy=half"],
                                  ["'half'",
                                   "Allowed: all, none, last_n, last_blocks, from_layer"]),
    "unknown_optimizer_name": Case(["optimizer.name=adagrad"],
                                   ["'adagrad'", "Allowed: rmsprop, adam, sgd, adamw"]),
    "misspelt_key": Case(["trainer.epoch=3"], ["trainer.epoch", "Did you mean trainer.epochs"]),
    "misspelt_top_level_key": Case(["lrr=1e-3"], ["lrr", "Did you mean lr"]),
    "lr_zero": Case(["lr=0"], ["lr must be > 0", "lr=0"]),
    "lr_negative": Case(["lr=-1e-3"], ["lr must be > 0", "lr=-0.001"]),
    "epochs_zero": Case(["trainer.epochs=0"], ["trainer.epochs must be >= 1", "got 0"]),
    "layers_beyond_base": Case(["freeze=last_n", "freeze.n=999"],
                               ["freeze.n=999", "157 layers", "freeze.n between 0 and 157"]),
    "blocks_beyond_base": Case(["freeze=last_blocks", "freeze.n=99"],
                               ["freeze.n=99", "the base has 11", "freeze.n between 0 and 11"],
                               tf=True, modes=("multi",)),
    "unknown_layer_name": Case(["freeze=from_layer", "freeze.layer=expanded_conv_10_ad"],
                               ["'expanded_conv_10_ad' is not a layer",
                                "Closest names: expanded_conv_10_add"],
                               tf=True, modes=("single",)),
    # Issue 19, defect 6: a "fine-tuning" whose layers hold no weight to train.
    "plan_trains_nothing": Case(["backbone=mobilenetv2", "freeze=last_n", "freeze.n=2",
                                 "freeze.bn=frozen"],
                                ["MobileNetV2 last 2 layers are Conv_1_bn and out_relu",
                                 "no weights to train with freeze.bn=frozen",
                                 "use freeze.n=3 or freeze.bn=trainable"], tf=True,
                                modes=("multi",)),
    "image_below_minimum": Case(["backbone=inceptionv3", "image_size=64"],
                                ["image_size=64", "inceptionv3", "(75 px)", "image_size=75"]),
    "missing_data_folder": Case(["dataset=folder", "dataset.path=/no/such/dir"],
                                ["'/no/such/dir' does not exist", "train/"]),
    # Unquoted, the shell leaves '~' after "key=" as it is, and Hydra's grammar fails on it.
    "unexpanded_home": Case(["dataset=folder", "dataset.path=~/PetImages"],
                            ["dataset.path=~/PetImages", "dataset.path=$HOME/PetImages"],
                            modes=("single",)),
    "data_path_is_a_file": Case(["dataset=folder", "dataset.path={data}/junk.weights.h5"],
                                ["junk.weights.h5' is a file, not a folder"], modes=("multi",)),
    # train/ alone: neither split as given nor a folder of classes (train/ + test/ would be)
    "missing_split": Case(["dataset=folder", "dataset.path={data}/no_validation"],
                          ["no_validation: found folder train", "but no test/",
                           "Accepted layouts"]),
    "classes_differ": Case(["dataset=folder", "dataset.path={data}/classes_differ"],
                           ["split 'test'", "classes_differ/test", "missing ['dogs']",
                            "extra ['dgos']"]),
    "class_without_usable_image": Case(["dataset=folder", "dataset.path={data}/no_usable"],
                                       ["no_usable/validation/dogs has no usable image",
                                        "bad.jpg: truncated", "notes.txt: not an image"]),
    "weights_file_missing": Case(["backbone.weights=/no/such.weights.h5"],
                                 ["'/no/such.weights.h5'", "backbone.weights=null"]),
    "weights_of_another_backbone": Case(["backbone.weights={data}/mobilenetv2.weights.h5"],
                                        ["mobilenetv2.weights.h5", "mobilenetv3small",
                                         "does not fit"], tf=True,
                                        modes=("single",)),
    "weights_file_not_hdf5": Case(["backbone.weights={data}/junk.weights.h5"],
                                  ["junk.weights.h5", "mobilenetv3small"], tf=True, modes=("multi",)),
    # 45 s: far below MLflow's own retries (minutes), above a loaded start under 3 test workers.
    "tracking_server_unreachable": Case([f"tracking.uri=http://127.0.0.1:{PORT}"],
                                        [f"http://127.0.0.1:{PORT}", "not reachable"], timeout=45),
}


def _datasets(d: Path) -> None:
    """The data folders and weights files the cases point at."""
    def images(folder: Path, n: int = 2) -> None:
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")

    for split in ("train", "validation", "test"):
        for cls in ("cats", "dogs"):
            typo = {"cats": "cats", "dogs": "dgos"}[cls] if split == "test" else cls
            images(d / "classes_differ" / split / typo)
            if split == "train":
                images(d / "no_validation" / split / cls)
            if (split, cls) != ("validation", "dogs"):
                images(d / "no_usable" / split / cls)
    bad = d / "no_usable" / "validation" / "dogs"
    bad.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad / "full.jpg")
    (bad / "bad.jpg").write_bytes((bad / "full.jpg").read_bytes()[:300])
    (bad / "full.jpg").unlink()
    (bad / "notes.txt").write_text("nothing to see")
    (d / "junk.weights.h5").write_text("not an HDF5 file")


def _weights_of_another_backbone(path: Path) -> None:
    """A real Keras weights file, of MobileNetV2 (needs TF: a subprocess)."""
    code = ("import sys, keras; keras.applications.MobileNetV2(include_top=False, weights=None, "
            "input_shape=(32, 32, 3)).save_weights(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True,
                   timeout=300)


@dataclass
class Result:
    rc: int
    out: str
    wall: float
    root: Path


def _run(case: Case, mode: str, root: Path, data: Path, weights=None) -> Result:
    if weights is not None and any("mobilenetv2.weights.h5" in a for a in case.args):
        try:
            weights.result()  # written meanwhile by the fixture
        except Exception as e:
            return Result(-1, f"[test] could not write the weights file: {e!r}", 0.0, root)
    args = ([] if mode == "single" else ["-m"]) + BASE + [a.format(data=data) for a in case.args]
    args += [f"root_dir={root}", f"hydra.run.dir={root}/out", f"hydra.sweep.dir={root}/multi"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=case.timeout, env=env)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() + (e.stderr or b"").decode()
        rc, out = -1, out + f"\n[test] TIMEOUT after {case.timeout} s"
    return Result(rc, out, time.perf_counter() - t0, root)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """The selected cases (all unless -k ...), a few subprocesses at a time."""
    base = tmp_path_factory.mktemp("errors")
    data = base / "data"
    _datasets(data)
    selected = {tuple(item.callspec.params[k] for k in ("name", "mode"))
                for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    jobs = {(name, mode): (CASES[name], mode, base / f"{name}-{mode}", data)
            for name, mode in selected}
    # Slow ones first; the unreachable-server cases mostly sleep.
    order = sorted(jobs, key=lambda k: -CASES[k[0]].timeout - 100 * CASES[k[0]].tf)
    # Fewer at once under xdist: the other workers' tests share the 2 cores.
    at_once = 2 if os.environ.get("PYTEST_XDIST_WORKER") else 2 + (os.cpu_count() or 1)
    with ThreadPoolExecutor(at_once) as ex, ThreadPoolExecutor(1) as prep:
        weights = (prep.submit(_weights_of_another_backbone, data / "mobilenetv2.weights.h5")
                   if ("weights_of_another_backbone", "single") in jobs else None)
        futures = {k: ex.submit(_run, *jobs[k], weights) for k in order}
        out = {k: f.result() for k, f in futures.items()}
    if os.environ.get("TRANSFERLAB_ERRORS_LOG"):
        with open(os.environ["TRANSFERLAB_ERRORS_LOG"], "w") as f:
            for (name, mode), r in out.items():
                runs = _job_runs_in_store(r.root)
                f.write(f"=== {name}-{mode} rc={r.rc} wall={r.wall:.1f}s runs={runs}\n"
                        f"{r.out[-1500:]}\n")
    return out


def _job_runs_in_store(root: Path) -> int:
    """Job runs in the store (a sweep's parent run is its record, not a job's)."""
    db = root / "mlruns" / "mlflow.db"
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from tags where key = 'transferlab.role' "
                           "and value = 'job'").fetchone()[0]


def _marks(c: Case, mode: str) -> list:
    marks = [pytest.mark.slow] if c.tf else []  # TF import + base build: ~15 s each
    return marks


PARAMS = [pytest.param(name, mode, id=f"{name}-{mode}", marks=_marks(c, mode))
          for name, c in CASES.items() for mode in c.modes]


@pytest.mark.parametrize("name,mode", PARAMS)
def test_bad_input_fails_fast_with_one_clear_message(results, name, mode):
    case, r = CASES[name], results[(name, mode)]
    tail = r.out[-3000:]
    print(f"{name}-{mode}: rc={r.rc} {r.wall:.1f} s")
    assert r.rc not in (0, -1), tail  # -1: timed out
    for w in case.words:
        assert w in r.out, f"{w!r} not in output:\n{tail}"
    assert "Traceback" not in r.out, tail
    assert "test_acc=" not in r.out and "Epoch 1/" not in r.out, tail
    if not case.tf:
        assert "TF_LOADED False" in r.out, tail
    assert _job_runs_in_store(r.root) == 0, f"a run was left in the store:\n{tail}"
